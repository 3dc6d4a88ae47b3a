#!/usr/bin/env bash
# Sets up, then runs the main job on the embedded store: declare a lawful source, enrol a
# folder of 12 LFW identities (one photo each), search with a *different* photo of one of
# them and with a stranger, verify two photos, and check the audit chain.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

DATA="${FACELEDGER_DATA:-$(cd .. && pwd)/shared/data}"
[ -d "$DATA/lfw" ] || { echo "demo: LFW not found under $DATA (set FACELEDGER_DATA)" >&2; exit 1; }
WORK="$(mktemp -d)"
export FACELEDGER_HOME="$WORK/store"
fl() { .venv/bin/faceledger "$@"; }

# A folder of <subject-ref>/<image> made of links into the shared data (nothing copied).
for name in Colin_Powell Tony_Blair Gloria_Macapagal_Arroyo Serena_Williams Jacques_Chirac \
            Vladimir_Putin Junichiro_Koizumi Hans_Blix Lleyton_Hewitt Jennifer_Capriati \
            Laura_Bush Ariel_Sharon; do
  mkdir -p "$WORK/gallery/$name"
  ln -s "$DATA/lfw/$name/${name}_0001.jpg" "$WORK/gallery/$name/"
done

set -x
fl init
fl source add demo-archive --lawful-basis consent --basis-ref "DEMO-CONSENT-001" \
  --jurisdiction GB --retention-days 365 --purpose investigation --supplier "Demo data (LFW)"
fl enroll demo-archive "$WORK/gallery"
fl search "$DATA/lfw/Serena_Williams/Serena_Williams_0002.jpg" --purpose investigation --case DEMO-1
fl search "$DATA/lfw/Winona_Ryder/Winona_Ryder_0001.jpg" --purpose investigation --case DEMO-2
fl verify "$DATA/lfw/Tony_Blair/Tony_Blair_0003.jpg" "$DATA/lfw/Tony_Blair/Tony_Blair_0004.jpg"
fl audit verify
{ set +x; } 2>/dev/null
echo "demo store left at $FACELEDGER_HOME"
