# syntax=docker/dockerfile:1
#
# One image for every flowscope service; the command picks the service:
#   python -m collector                      node agent (root + BPF capabilities, see k8s/)
#   python -m enricher publish [--file F]    Kubernetes metadata -> compacted topic
#   python -m enricher join                  raw -> enriched
#   python -m processors worker              enriched -> metrics (Faust)
# Settings are FLOWSCOPE_* environment variables (k8s/configmap.yaml, docker-compose.yml).
#
#   docker build -t flowscope:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- BPF objects -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS bpf
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        clang llvm libbpf-dev bpftool make libc6-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
# vmlinux.h is dumped from the build host's kernel BTF (BuildKit mounts the host's /sys).
# That is enough: the objects are CO-RE, relocated against each node's own BTF at load time.
# Point BTF at another file (inside the build context) to build where /sys has no BTF.
ARG BTF=/sys/kernel/btf/vmlinux
# bpf/Makefile's target arch for the PT_REGS macros: x86 or arm64.
ARG BPF_ARCH=x86
WORKDIR /src
COPY bpf/ bpf/
# Never reuse objects or a vmlinux.h that came in with the build context from a developer's tree.
RUN rm -rf bpf/.output \
 && make -C bpf BTF="${BTF}" ARCH="${BPF_ARCH}" \
 && ls -l bpf/.output/tcpconn.bpf.o

# ---- Python packages ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python
# Every dependency ships a manylinux wheel for CPython 3.11; the compiler builds our own C hot
# paths (setup.py), in this stage only: the runtime image gets the built modules.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/flowscope
ENV PATH=/opt/flowscope/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py ./
COPY flowscope/ flowscope/
COPY collector/ collector/
COPY enricher/ enricher/
COPY processors/ processors/
# Shipped inside the package (flowscope/resources.py): the price table, the alert rules and
# the BPF objects built in the first stage.
COPY config/ config/
COPY --from=bpf /src/bpf/.output/ bpf/.output/
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir . \
 && cd / && python -c "import flowscope, collector, enricher, processors, enricher.join._render, collector.tcp._encode" \
 && python -c "from flowscope.resources import PACKAGE_DATA as d, SHIPPED; import sys; sys.exit(len(list(d.glob('*'))) != len(SHIPPED))"

# ---- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="flowscope" \
      org.opencontainers.image.description="eBPF network observability for Kubernetes as Kafka streams"
# libbpf1: the collector loads and attaches the BPF objects through the system libbpf.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/flowscope --create-home flowscope
COPY --from=python /opt/flowscope /opt/flowscope
# The BPF objects, price table and alert rules travel inside the installed package.
ENV PATH=/opt/flowscope/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The working directory is the one writable place (Faust keeps its table state under it).
WORKDIR /var/lib/flowscope
# Non-root by default; only the collector runs as root (k8s/collector.yaml, docker-compose.yml).
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["collector", "--help"]
