# The lab (`softphone lab`): the local stand-in of the OmniSense platform (REST API, SIP over
# WebSocket on ws:// and wss://, the dialer with real media, the status page), built from this
# repository. docker-compose.yml runs it next to MariaDB (`database`) and coturn (`turn`).
#
#   docker build -t softphone/lab .
#   docker run --rm --network host softphone/lab --host 0.0.0.0
FROM python:3.11-slim-bookworm

# aiortc, av and pylibsrtp ship manylinux wheels with their native libraries: nothing to compile.
WORKDIR /opt/softphone
COPY pyproject.toml README.md ./
COPY softphone ./softphone
RUN pip install --no-cache-dir . \
 && useradd --system --create-home --home-dir /var/lib/softphone softphone \
 && mkdir -p /var/lib/softphone/recordings \
 && chown -R softphone /var/lib/softphone
USER softphone
WORKDIR /var/lib/softphone

# 8088: REST API, status page and ws://.../ws; 8089: wss://.../ws (the Webphone's default).
EXPOSE 8088 8089
ENTRYPOINT ["softphone", "lab"]
CMD ["--host", "0.0.0.0"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/lab/status' % os.environ.get('LAB_PORT', '8088'), timeout=4)"
