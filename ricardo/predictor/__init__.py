"""Request-shape prediction: how many tokens a request brings and how many it will generate.

- `tokens.InputTokenCounter`: prompt tokens, exact (quicktok + chat template) or estimated and corrected online.
- `features.features_from_body(body, input_tokens)`: what the model may know about a request (its body only).
- `model.OutputLengthPredictor`: p50 / p90 of the output length, scored and retrained on outcomes.
- `ricardo predictor eval|train` (`cli.py`): the comparison with peers' baselines; the cold-start rebuild.

Imports nothing else of ricardo's.
"""
