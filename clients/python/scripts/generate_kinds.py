"""Regenerates src/tandem/kinds.py and src/tandem/kinds.json from
`tandem kinds --json-schema`.

Run with `python clients/python/scripts/generate_kinds.py [path/to/tandem]`
(default: target/debug/tandem, built with `cargo build -p tandem-cli`).
"""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path.insert(0, str(HERE.parent / "src"))

from tandem._codegen import generate  # noqa: E402


def main() -> None:
    tandem = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "debug" / "tandem")
    out = subprocess.run([tandem, "kinds", "--json-schema"], check=True, capture_output=True).stdout
    import json

    code, catalog = generate(json.loads(out))
    package = HERE.parent / "src" / "tandem"
    (package / "kinds.py").write_text(code)
    (package / "kinds.json").write_text(catalog)
    print(f"wrote {package / 'kinds.py'} and {package / 'kinds.json'}")


if __name__ == "__main__":
    main()
