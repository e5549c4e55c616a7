"""Everything trainyard keeps in Redis, and the only code that names its keys or runs its
commands on them.

- `keys`: every key name (RedisKeys).
- `scripts`: the Lua scripts that change a job atomically.
- `records`: the stored job record (JobRecord), its encoding, ids and page cursors.
- `jobs`: JobRegistry, the owner of job records: create, read, page, move between states
  (each move appends its `status` event in the same script), cancel.
- `leases`: the per-job lease with its fencing token, which a worker holds while it trains.
- `events`: the per-job event streams (metrics, checkpoints, status) and their live tail.
- `plans`: the memory planner's cache of probes and its bookkeeping.
- `heartbeats`: which workers are alive, what each is busy with, drain requests.

Code outside this package calls these classes; it never builds a key (an import-linter
contract in pyproject.toml keeps it that way)."""
