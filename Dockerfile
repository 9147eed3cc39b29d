# MotionMatcher web app on a CUDA GPU (it also runs without one, on the CPU, with the embedded model).
#
#   docker build -t motion-matcher .
#   docker run --gpus all -p 7860:7860 -v motion-matcher-data:/data motion-matcher --model cerspense/zeroscope_v2_576w
#
# Arguments after the image name go to app.py (see `python app.py --help` and docs/deploy.md). The volume /data
# holds the Hugging Face cache (model downloads) and the job store (runs, checkpoints, results), so both survive
# new containers. CUDA_IMAGE and TORCH_CUDA must agree with each other and with the host's NVIDIA driver.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_CUDA=cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A non-root user owns the app's data; a named volume mounted on /data starts with this ownership.
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app:app /data

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The CUDA build of torch first, from PyTorch's own index. requirements.txt pins torch==2.13.0 (the CPU build on a
# CPU machine); the installed 2.13.0+cu128 satisfies that pin, so the next step keeps it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_CUDA}
COPY requirements.txt /app/requirements.txt
RUN pip install -r /app/requirements.txt

WORKDIR /app
COPY --chown=app:app . /app
USER app

# MOTION_MATCHER_PUBLIC makes app.py listen on 0.0.0.0 (the container's port is what gets published).
ENV HF_HOME=/data/huggingface \
    MOTION_MATCHER_JOBS=/data/motion-matcher-jobs \
    MOTION_MATCHER_PUBLIC=1 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=5)" || exit 1
# docker stop sends SIGTERM: app.py pauses the running job with a checkpoint; allow it time (docker stop -t 60).
ENTRYPOINT ["python3", "app.py"]
