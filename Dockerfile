# A patch release on a named Debian release: a rebuild gets the same Python on the same
# base until this line changes.
FROM python:3.11.14-slim-bookworm

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
# The dependencies first, exactly as locked: every package pinned and checked against its
# hash, so a build installs the same files the lock was made from or fails (`make lock`
# regenerates the lock; a unit test checks it pins every dependency of pyproject.toml).
# The build backend is locked too, and the tracker's own package is then built with it,
# without fetching anything: --no-deps, --no-build-isolation.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
# Only what `pip install .` needs, never the whole context: whatever lies next to the
# sources (secrets/, .env, a local .retention/ data directory) stays out of the image.
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY streams ./streams
COPY processors ./processors
COPY store ./store
COPY retention ./retention
# the alerts' runbook, which the web view serves at /runbook
COPY prometheus/runbook.md /usr/share/retention/runbook.md
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info

USER 10001:10001
WORKDIR /var/lib/retention

CMD ["retention", "worker"]
