"""Feedback quality: agreement, rater calibration, bias detection, consensus labels and
simulated rater panels. Never imports torch (the web app and a laptop without it use this).

    judgments.py    records -> long tables (one row per vote; rankings -> C(K, 2) pairs)
    agreement.py    pairwise agreement, Krippendorff's alpha, Kendall's tau / W
    ai_alignment.py AI-labeler alignment with the human labels (RLAIF)
    calibration.py  gold accuracy and screening
    bias.py         position, length, leniency, drift, divergence (effect, test, Holm)
    consensus.py    majority, Dawid-Skene, noisy Bradley-Terry -> soft-label comparisons
    simulate.py     simulated rater panels and `plan`
    gold.py         the shipped gold scorer `helpful_harmless`
    report.py       HTML + JSON report, `summary_for_admin`
    cli.py          `alignloop quality report|consensus`, `simulate_command`, `plan_command`
"""
