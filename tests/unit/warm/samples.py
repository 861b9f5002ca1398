"""Realistic CI files, as the tests write them to disk."""

from __future__ import annotations

GITHUB_WORKFLOW = """\
name: ci
on:
  push:
    branches: [main]
jobs:
  test:
    runs-on: ubuntu-latest
    container: node:20
    services:
      redis:
        image: redis:7
        ports: ["6379:6379"]
      postgres:
        image: postgres:16-alpine
        env:
          POSTGRES_PASSWORD: postgres
    steps:
      - uses: actions/checkout@v4
      - run: npm ci && npm test
      - name: lint the shell scripts
        uses: docker://koalaman/shellcheck:v0.10.0
        with:
          args: scripts/*.sh
  build:
    runs-on: ubuntu-latest
    container:
      image: ghcr.io/org/builder:2024.1
      credentials:
        username: ${{ github.actor }}
        password: ${{ secrets.GITHUB_TOKEN }}
    steps:
      - uses: docker://alpine:3.20
        with:
          args: echo hello
  matrix:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        image: [python:3.11, python:3.12]
    container: ${{ matrix.image }}
    services:
      cache:
        image: ${{ matrix.cache || '' }}
    steps:
      - run: python --version
"""

GITLAB_CI = """\
stages: [build, test]

variables:
  RUBY_VERSION: "3.3"
  DOCKER_DRIVER: overlay2

default:
  image: ruby:3.3
  services:
    - postgres:16
    - name: redis:7-alpine
      alias: cache

.node-template: &node
  image: node:20-alpine
  before_script: [npm ci]

build:
  stage: build
  image:
    name: golang:1.22
    entrypoint: [""]
  script: [go build ./...]

test:
  stage: test
  <<: *node
  services:
    - name: mysql:8.0
      alias: db
    - name: $CI_REGISTRY_IMAGE/fixtures:latest
  script: [npm test]

versioned:
  stage: test
  image: ruby:${RUBY_VERSION}-slim
  script: [bundle exec rake]

deploy:
  stage: test
  image: $CI_REGISTRY/ops/deployer:latest
  script: !reference [.node-template, before_script]
"""

COMPOSE = """\
services:
  web:
    build: .
    image: registry.example.com/team/web:dev
    ports: ["8080:8080"]
  worker:
    build:
      context: ./worker
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD: example
  cache:
    image: "redis:${REDIS_TAG:-7.2}"
    platform: linux/arm64
  proxy:
    image: nginx:${NGINX_TAG}
x-common: &common
  restart: always
"""

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=alpine:3.20
ARG GO_VERSION="1.22"
ARG UNSET_BASE

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
RUN <<EOF
echo building
FROM not-an-instruction:1
EOF
RUN go build -o /app \\
    ./cmd/app

FROM build AS test
RUN go test ./...

FROM --platform=linux/arm64 \\
     debian:bookworm-slim AS arm-tools

FROM ${BASE}
COPY --from=build /app /app

FROM ${UNSET_BASE}

from scratch as final
COPY --from=build /app /app
"""

KUBERNETES = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      initContainers:
        - name: migrate
          image: ghcr.io/org/migrate:1.4
      containers:
        - name: web
          image: nginx:1.27
        - name: sidecar
          image: busybox:1.36
---
# an empty document, as generators leave them
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - name: report
              image: python:3.12-slim
          restartPolicy: OnFailure
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  image: not-a-container-image
"""
