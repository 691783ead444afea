# syntax=docker/dockerfile:1
# The raysys image: the official Ray image plus raysys and its dependencies. Used by every
# pod in helm/raysys and manifests/ (Ray head and workers, RayJob submitters, MLflow).
#
#   CPU: docker build -t raysys:2.60.0-py311-cpu .
#   GPU: docker build -t raysys:2.60.0-py311-gpu --build-arg VARIANT=gpu --build-arg TORCH_INDEX=cu128 .
#
# The tag's Ray version must equal RAY_VERSION below, rayVersion in the manifests and the
# ray pin in pyproject.toml (tests/test_k8s_dockerfile.py checks this).

# Ray version of the base image; equal to pyproject.toml's ray==... pin.
ARG RAY_VERSION=2.60.0
# Python of the base image (the image's tag suffix).
ARG PYTHON_TAG=py311
# cpu, or gpu for the CUDA base image (rayproject/ray:<version>-<python>-gpu).
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}

# torch build: "cpu" for the CPU image; a CUDA index (cu126, cu128, ...) for the GPU image.
ARG TORCH_INDEX=cpu
# torch version; equal to the CPU wheel the tests use.
ARG TORCH_VERSION=2.13.0
# Extra pip packages: database driver and object-store clients for the MLflow server.
ARG EXTRA_PACKAGES="psycopg2-binary boto3"

# Where the checkout lives in the image; RayJob entrypoints run /home/ray/raysys/jobs/*.py.
ENV APP_DIR=/home/ray/raysys \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The Ray image's non-root user (uid 1000, group users/100) owns its Python environment.
USER ray
WORKDIR ${APP_DIR}

# torch first, from the matching PyTorch index, so `pip install .` keeps it (CUDA build on GPU).
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"

# Then raysys and the rest of its dependencies; ray[...] resolves to the image's own Ray.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raysys ./raysys
RUN pip install . ${EXTRA_PACKAGES} \
    && python -c "import ray, torch, raysys; print('ray', ray.__version__, 'torch', torch.__version__)"

# The `ray job submit` entrypoints (and the sweep configs they read).
COPY --chown=ray:users jobs ./jobs

# No secrets here: MLflow credentials, database URIs and object-store keys come from
# Kubernetes Secrets at run time (see helm/raysys/values.yaml, mlflow.*).
EXPOSE 6379 8265 10001 8000 8080 5000
CMD ["/bin/bash"]
