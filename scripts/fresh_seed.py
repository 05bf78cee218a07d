"""The seed of a session's fresh training forgeries: 1000 + the training program's newest step in the
ledger (0 for a program that has none), so every session synthesizes a set no earlier one saw.
Used by train_session.sh and device_train.sh.
  python scripts/fresh_seed.py [LEDGER]      (default models/ledger.jsonl)
"""

import json
import sys
from pathlib import Path

ledger = Path(sys.argv[1] if len(sys.argv) > 1 else "models/ledger.jsonl")
lines = ledger.read_text().splitlines() if ledger.is_file() else []
steps = [json.loads(ln).get("step") for ln in lines if ln.strip()]
print(1000 + max([s for s in steps if isinstance(s, int)], default=0))
