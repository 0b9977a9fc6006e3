# Stand-in for python:3.11-slim, built by deploy/offline-images.sh where no image registry is
# reachable: Debian bookworm's own Python 3.11 on the debootstrapped debian:bookworm-slim stand-in.
# `python`/`pip` on PATH, pip installs system-wide (as in the official image); ca/ holds the
# build host's extra CA certificates (a TLS-inspecting egress proxy), so pip reaches PyPI.
FROM debian:bookworm-slim
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
LABEL org.perg.stand-in="python:3.11-slim from Debian bookworm's python3 (deploy/offline-images.sh)"
CMD ["python3"]
