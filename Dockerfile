# CondInst Studio: the app on the bundled default model, GPU-ready.
# Build: docker build -t condinst-studio .
# Run:   docker run --gpus all -p 7860:7860 -v condinst-data:/data condinst-studio
# The PyTorch wheels in requirements.txt bring their own CUDA 13 libraries; the host needs an NVIDIA driver
# recent enough for CUDA 13 (or run without --gpus on CPU).
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/condinst-studio

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt requirements-tracking.txt pyproject.toml README.md ./
RUN pip install -r requirements.txt && pip install --no-deps -r requirements-tracking.txt

COPY condinst ./condinst
COPY training ./training
COPY app ./app
COPY assets ./assets
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 studio \
    && mkdir -p /data/workspace \
    && chown -R studio:studio /data
USER studio

VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD curl -fsS http://127.0.0.1:7860/ >/dev/null || exit 1

ENTRYPOINT ["condinst-app", "--host", "0.0.0.0", "--port", "7860", "--workspace", "/data/workspace"]
