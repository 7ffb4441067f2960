#!/usr/bin/env bash
# Start or stop a Docker engine on a machine with none running (no systemd), e.g. for CI.
#   docker/engine.sh start   install docker.io and docker-compose if missing, start dockerd
#   docker/engine.sh stop    stop the dockerd that `start` started (and only that one)
set -euo pipefail
pid_file=/tmp/ssl-pipeline-dockerd.pid
case "${1:-}" in
    start)
        if ! command -v dockerd > /dev/null || ! command -v docker-compose > /dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose > /dev/null
        fi
        if docker info > /dev/null 2>&1; then
            echo "a Docker engine is already running"
            exit 0
        fi
        # no NAT or bridge here: containers talk over user-defined networks and published ports
        dockerd --storage-driver=overlay2 --iptables=false --bridge=none > /tmp/ssl-pipeline-dockerd.log 2>&1 &
        echo $! > "$pid_file"
        for _ in $(seq 60); do
            docker info > /dev/null 2>&1 && { echo "Docker engine started (pid $(cat "$pid_file"))"; exit 0; }
            sleep 1
        done
        echo "dockerd did not start; its log:" >&2
        tail -20 /tmp/ssl-pipeline-dockerd.log >&2
        exit 1 ;;
    stop)
        if [ -f "$pid_file" ]; then
            kill "$(cat "$pid_file")" 2> /dev/null || true
            rm -f "$pid_file"
        fi ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
