"""Keys under which the wrapper stores its own state in ``state_dict()``.

The wrapped optimizer's ``state_dict`` is returned as it is, with one extra top-level entry,
:data:`WRAPPER`, so that loading the dict into a bare optimizer of the same class only needs that
entry removed, and the base's per-parameter ``state`` never holds a key of ours.
"""

WRAPPER = "fastforward"

# Entries of state_dict()[WRAPPER].
VERSION = "version"
HYPERPARAMETERS = "hyperparameters"
ENABLED = "enabled"
GAVE_UP = "gave_up"
FAILED_STAGES_IN_A_ROW = "failed_stages_in_a_row"
LAST_TAU = "last_tau"
INTERVAL_NOW = "interval_now"
LAST_SCHEDULED_STEP = "last_scheduled_step"
REFERENCE = "reference"  # cost_aware: the last measured (step, validation loss)
STATS = "stats"

FORMAT_VERSION = 1
