"""Request-shape prediction: how many tokens a request brings and how many it will generate.

- `tokens.InputTokenCounter`: prompt tokens, exact (quicktok + chat template) or estimated and corrected online.
- `features.features_from_body(body, input_tokens)`: what the model may know about a request (its body only);
  `features.features_from_lengths(input_tokens, model, max_tokens)`: a request known by its lengths only (a trace).
- `model.OutputLengthPredictor`: p50 / p90 of the output length (`predict`), learnt from outcomes (`observe`):
  the text model blended with each model's running statistics of outcomes (`online.py`), retrained by refits.
- `ricardo predictor eval|train` (`cli.py`): the comparison with peers' baselines; the cold-start rebuild.

Imports nothing else of ricardo's.
"""
