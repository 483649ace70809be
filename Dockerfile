# icapwatch agent image: make image (needs a container engine).
# The eBPF objects are embedded in the binary; nothing else is needed at
# run time, so the final stage is distroless and static.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=
RUN make build VERSION=${VERSION} REVISION=${REVISION}

FROM gcr.io/distroless/static-debian12
ARG VERSION=dev
ARG REVISION=
LABEL org.opencontainers.image.title="icapwatch" \
      org.opencontainers.image.description="eBPF observability for ICAP-over-TLS scanning" \
      org.opencontainers.image.source="https://github.com/icapwatch/icapwatch" \
      org.opencontainers.image.licenses="Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /src/bin/icapwatch /usr/local/bin/icapwatch
EXPOSE 9344
ENTRYPOINT ["/usr/local/bin/icapwatch"]
CMD ["agent"]
