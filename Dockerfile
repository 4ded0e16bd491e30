FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The worker runs unprivileged; its home is the working directory because Faust and
# the tracker keep small state directories relative to the current directory.
RUN groupadd --system --gid 10001 retention \
    && useradd --system --uid 10001 --gid retention --create-home \
        --home-dir /var/lib/retention --shell /usr/sbin/nologin retention

WORKDIR /usr/src/retention-tracker
# Only what `pip install .` needs, never the whole context: whatever lies next to the
# sources (secrets/, .env, a local .retention/ data directory) stays out of the image.
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY streams ./streams
COPY processors ./processors
COPY store ./store
COPY retention ./retention
RUN pip install . \
    && rm -rf build ./*.egg-info

USER 10001:10001
WORKDIR /var/lib/retention

CMD ["retention", "worker"]
