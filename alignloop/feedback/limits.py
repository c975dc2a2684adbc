"""Bounds on everything the feedback app accepts (and its few defaults), in one place: the CLI options, the JSON API,
the forms and the store all check against these (no imports, so the CLI can read them without
loading the database layer)."""

MAX_ID = 2**31 - 1  # ids, seeds: the portable integer range (PostgreSQL INTEGER); larger is a 404/422
MAX_SEED = MAX_ID
MAX_RATERS_PER_ITEM = 100
MAX_COMMENT = 2000
MAX_RESPONSES = 16
MAX_RESPONSE_CHARS = 50_000
MAX_PROMPT_CHARS = 100_000
MAX_NAME = 100
MAX_CAMPAIGN_NAME = 200
MAX_INSTRUCTIONS = 20_000
MAX_KEY = 100
MAX_TOKEN = 200
MAX_MEDIA_BYTES = 20 * 2**20  # one clip video (the control loop's are tens of KB)

MAX_DB_REQUESTS = 32  # requests working with the database at once; fewer than the pool's 40 connections
BUSY_TIMEOUT_S = 5.0  # a request waits this long for the database's write lock, then answers 503
CLI_BUSY_TIMEOUT_S = 60.0  # a command line tool waits longer: nobody is waiting on a page
RETRY_AFTER_S = 2  # the Retry-After of a 503

DEFAULT_BASE_URL = "http://127.0.0.1:8000"  # login links, when no address is configured


def is_db_id(value: object) -> bool:
    """An id the database can hold (anything else is simply not found)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
