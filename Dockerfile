# gptq-service image (CPU worker + server), Debian 12 packages only.
#   docker build -t gptq-service .
#   docker run -p 50051:50051 -p 9090:9090 -v /models:/models -v /out:/out gptq-service \
#     --allowed-model-roots /models --allowed-output-roots /out
# Not built in CI (no Docker engine on these machines); the build stage runs the same scripts
# as CI (deploy/setup-deps.sh, deploy/build.sh).
# For GPU workers, build on a CUDA LibTorch base and run `gptq-worker serve --server HOST:PORT`.
FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN bash deploy/setup-deps.sh && bash deploy/build.sh -DGPTQ_BUILD_TESTS=OFF

FROM debian:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libgrpc++-dev libprotobuf32 libtorch-dev libopenblas0-pthread libsqlite3-0 \
      libcurl4 libcpp-httplib0.11 libabsl20220623 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/bin/ /usr/local/bin/
# The job store lives here (the server does not create the directory of --db).
RUN mkdir -p /var/lib/gptq
VOLUME /var/lib/gptq
EXPOSE 50051 9090
ENTRYPOINT ["gptq-server", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9090", \
            "--db", "/var/lib/gptq/jobs.db", "--local-workers", "auto", "--allow-insecure-remote"]
