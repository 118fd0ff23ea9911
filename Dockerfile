# nmstream worker image: slim Python, non-root, the package installed, port 19093.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nmstream ./nmstream
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/nmstream --create-home nmstream
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/nmstream
ENV NMSTREAM_WEB_HOST=0.0.0.0 \
    NMSTREAM_DATA_DIR=/var/lib/nmstream/data
EXPOSE 19093
ENTRYPOINT ["nmstream"]
CMD ["worker", "--loglevel", "info"]
