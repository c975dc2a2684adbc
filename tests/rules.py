"""Rule rewards used by the tests (importable as tests.rules:NAME)."""


def count_e(prompt: str, response: str) -> float:
    """+1 per letter 'e' in the response: a target a tiny random model can learn in a few dozen steps."""
    return float(response.count("e"))


def word_count(prompt: str, response: str) -> float:
    """The number of words in the response (a second source for the weighted-sum test)."""
    return float(len(response.split()))
