# wa-controller: the operator, and the instance simulator for demos (same image).
#   docker build -t wa-controller:dev .
# Stage 1 builds a virtualenv with the project and its dependencies; stage 2 copies only
# that virtualenv onto a slim Python and runs it as an unprivileged user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/wa-controller
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
RUN /opt/wa-controller/bin/pip install .

FROM python:3.11-slim
# A passwd entry for the image's user, for tools that look the user up; the operator
# itself never does (it runs under any UID, e.g. OpenShift's).
RUN groupadd --gid 65532 wa-controller \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin wa-controller
COPY --from=build /opt/wa-controller /opt/wa-controller
ENV PATH=/opt/wa-controller/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    USER=wa-controller \
    LOGNAME=wa-controller \
    HOME=/tmp
# Non-root, numeric (so runAsNonRoot can verify it); the chart mounts a writable /tmp
# and /var/lib/wa-controller over a read-only root filesystem.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081 9090
ENTRYPOINT ["wa-controller"]
CMD ["run"]
