"""Load generator: trace readers, synthetic prompts, open-loop streaming replay, reports.

Entry point: `ricardo loadgen` (cli.py). Imports nothing else of ricardo.
"""
