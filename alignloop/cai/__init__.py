"""AI feedback (issue 7): Constitutional AI and RLAIF.

constitution.py  principles and few-shot examples as data (YAML; the CAI paper's JSON layout)
prompts.py       the chat layouts of critique, revision, (A)/(B) labels and 1..10 ratings
revise.py        SL-CAI: response -> critique -> revision, n steps, a principle per step
judge.py         RL-CAI: soft labels from the judge's (A)/(B) probabilities, both orders, CoT
direct.py        d-RLAIF: a 1..10 rating judge, a reward source for PPO (no reward model)
cli.py           `alignloop cai revise | label | score | import`
"""
