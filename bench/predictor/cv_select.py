"""Choose the output-length model's settings by cross-validation on a TRAINING file only.

    python bench/predictor/cv_select.py /tmp/splits/sharegpt_train.jsonl [--repeats 3]

Folds are grouped by prompt (a prompt repeated in the file stays in one fold, as the held-out split keeps it on one
side) and repeated with different shuffles. For each setting on the grid it fits the real `fit_model` on the other
folds and prints the mean MAE of p50 and the p90 coverage over the held-out folds, next to the baselines fed the
same folds. The test files are never read: settings picked here are then scored once with `ricardo predictor eval`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from ricardo.predictor import model
from ricardo.predictor.baselines import baselines
from ricardo.predictor.evaluate import cross_validation_folds, read_samples

GRID = {"RIDGE_ALPHA": (0.3, 1.0, 3.0), "MIN_DF": (2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    samples, actual = read_samples(args.train)
    folds = cross_validation_folds(samples, args.repeats)

    scores: dict[str, list[float]] = {}
    for train, test in folds:
        for name, baseline in baselines().items():
            for i in train:
                baseline.observe(samples[i][0].input_tokens, samples[i][1])
            predicted = [baseline.predict(samples[i][0].input_tokens) for i in test]
            scores.setdefault(name, []).append(float(np.mean(np.abs(actual[test] - predicted))))
    print(json.dumps({name: round(float(np.mean(v)), 2) for name, v in scores.items()}))

    defaults = {name: getattr(model, name) for name in GRID}
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        vars(model).update(setting)
        errors, covered = [], []
        for train, test in folds:
            fitted = model.fit_model([samples[i] for i in train])
            predictions = [fitted.predict(samples[i][0]) for i in test]
            errors.append(np.mean(np.abs(actual[test] - [p.p50 for p in predictions])))
            covered.append(np.mean(actual[test] <= [p.p90 for p in predictions]))
        print(
            json.dumps(
                {**setting, "mae": round(float(np.mean(errors)), 2), "p90_coverage": round(float(np.mean(covered)), 3)}
            )
        )
    vars(model).update(defaults)


if __name__ == "__main__":
    main()
