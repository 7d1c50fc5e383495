#!/usr/bin/env bash
# MLServer 1.7.1 for the serving benchmark's `mlserver` target (benchmarks/mlserver_target.py):
# its own virtualenv, .bench/mlserver-venv (gitignored), because MLServer needs protobuf<7 and
# cannot share Kiln's .venv. Installs from the machine's configured pip index.
#
#     benchmarks/setup_mlserver.sh            # does nothing when mlserver 1.7.1 is there
#
# The requirements are exact, and the whole set pip resolved for them on 2026-12-02 is pinned
# below as constraints, so every machine gets the same servers and pip does not backtrack.
# grpcio is pinned to Kiln's own release (1.81.1; pip would pick 1.85.3) so both servers run
# on the same gRPC transport library; protobuf 6.33.6 is Kiln's too.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.bench/mlserver-venv"
want=1.7.1

have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mlserver"))' \
  2>/dev/null || true)"
if [[ "$have" == "$want" ]]; then
  echo "mlserver $want is already in $venv"
  exit 0
fi

mkdir -p "$repo/.bench"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
cat >"$constraints" <<'PINS'
aiofiles==25.1.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiokafka==0.14.0
aiosignal==1.4.0
annotated-types==0.8.0
anyio==4.16.0
asgiref==3.13.0
async-timeout==5.0.1
attrs==26.1.0
brotli==1.2.1
certifi==2026.10.19.post1
click==8.5.1
fastapi==0.115.14
flatbuffers==25.12.19
frozenlist==1.8.0
gevent==26.9.0
geventhttpclient==2.6.1
googleapis-common-protos==1.76.0
greenlet==3.3.2
h11==0.16.0
idna==3.20
importlib_resources==6.5.2
ml_dtypes==0.5.4
multidict==7.2.1
opentelemetry-api==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-instrumentation==0.66b2
opentelemetry-instrumentation-asgi==0.66b2
opentelemetry-instrumentation-fastapi==0.66b2
opentelemetry-instrumentation-grpc==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-util-http==0.66b2
orjson==3.13.0
packaging==26.4
pandas==3.1.1
prometheus_client==0.26.0
propcache==0.5.4
py-grpc-prometheus==0.8.0
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
python-dateutil==4.0.0
python-dotenv==1.2.4
python-multipart==0.0.34
python-rapidjson==1.25
starlette==0.46.2
starlette_exporter==0.24.0
tritonclient==2.73.0
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
wrapt==2.5.2
yarl==1.25.1
zope.event==6.2
zope.interface==8.7
PINS
"$venv/bin/pip" install --quiet --constraint "$constraints" \
  "mlserver==$want" "onnxruntime==1.32.0" "numpy==2.4.6" "grpcio==1.81.1" "protobuf==6.33.6"
"$venv/bin/pip" check
echo "$("$venv/bin/mlserver" --version) in $venv"
