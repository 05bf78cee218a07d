"""Set a student dir's tile size (config.json "tile"): the package's tile is an export choice, since the
student is fully convolutional and trains on crops. Used by default_model.sh, promote.sh and chain.sh.
  python scripts/set_tile.py STUDENT_DIR TILE
"""

import json
import sys

if len(sys.argv) != 3 or not sys.argv[2].isdigit() or int(sys.argv[2]) % 32:
    sys.exit(__doc__ + "\nTILE must be a multiple of 32")
path = f"{sys.argv[1]}/config.json"
with open(path) as f:
    cfg = json.load(f)
cfg["tile"] = int(sys.argv[2])
with open(path, "w") as f:
    json.dump(cfg, f, indent=2)
