"""Research harnesses, not part of the installed package: each trains and measures models to answer one
question and prints one JSON object. Run from the repository root:

    python -m experiments.longvideo --help     # the causal model against the bidirectional baseline
    python -m experiments.recipe --help        # two training recipes over several seeds, paired
    python -m experiments.motion_bound --help  # how well any predictor can place the synthetic shapes
"""
