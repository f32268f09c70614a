"""Fill a database with a realistic log of calls, fast, for the admin benchmark.

    DATABASE_URL=sqlite:////tmp/bench.sqlite3 python -m bench.seed --calls 1000000
    DATABASE_URL=postgres://user@127.0.0.1:55433/bench python -m bench.seed --calls 1000000

The mix is what a site's log looks like: mostly chat (some streamed, some with tools),
embeddings, a few images, transcriptions, moderations and file/fine-tune/model calls; a
couple hundred users with one to three keys each, a long tail of heavy users; about 5% failures
of several kinds and 1% replays; timestamps over ``--days`` with a daily rhythm. Bodies are
shaped like the real ones and compacted like the recorder compacts them (a few hundred bytes
to a few KB a row). Costs come from the price table, like the recorder's.

Rows are written in time order in batches, straight through the database cursor
(``executemany`` on SQLite, ``COPY`` on PostgreSQL) rather than through model instances, so a
million rows take minutes, not an hour. The database is migrated first and analysed at the
end (``VACUUM ANALYZE`` on PostgreSQL, ``ANALYZE`` on SQLite, as autovacuum or ``PRAGMA
optimize`` would). If it already holds at least ``--calls``
calls nothing is written (``--reset`` empties the call and key tables first).
"""

import argparse
import datetime
import json
import logging
import os
import random
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.seed")

WORDS = ["invoice", "contract", "refund", "shipping", "order", "customer", "account", "password", "travel", "hotel", "flight", "recipe", "garden", "weather", "report", "summary", "meeting", "agenda", "budget", "forecast", "python", "django", "database", "migration", "error", "timeout", "latency", "cluster", "deploy", "release", "feature", "review", "translate", "french", "german", "spanish", "poem", "story", "email", "letter", "apology", "thanks", "complaint", "product", "price", "discount", "warranty", "battery", "screen", "laptop", "phone", "camera", "music", "movie", "book", "history", "science", "physics", "biology", "chemistry", "math", "algebra", "essay", "outline", "slide", "chart"]
RARE = ("quokka", "zeppelin", "marzipan", "obsidian")
SYSTEMS = ("You are a helpful assistant.", "You answer customer support questions briefly.",
           "You are a careful translator.", "Summarise the user's text in three bullet points.")

# (operation, weight, method, path, models)
OPERATIONS = [
    ("createChatCompletion", 55, "POST", "/chat/completions",
     [("gpt-4o-mini", 45), ("gpt-4o", 20), ("gpt-3.5-turbo", 20), ("gpt-4-turbo", 8),
      ("gpt-4", 4), ("o1-mini", 3)]),
    ("createEmbedding", 15, "POST", "/embeddings",
     [("text-embedding-3-small", 60), ("text-embedding-ada-002", 30),
      ("text-embedding-3-large", 10)]),
    ("createCompletion", 6, "POST", "/completions",
     [("gpt-3.5-turbo-instruct", 70), ("text-davinci-003", 30)]),
    ("createModeration", 6, "POST", "/moderations", [("text-moderation-latest", 100)]),
    ("createImage", 4, "POST", "/images/generations", [("dall-e-3", 50), ("dall-e-2", 50)]),
    ("createTranscription", 4, "POST", "/audio/transcriptions", [("whisper-1", 100)]),
    ("createEdit", 1, "POST", "/edits", [("text-davinci-edit-001", 100)]),
    ("listModels", 3, "GET", "/models", [("", 100)]),
    ("listFiles", 2, "GET", "/files", [("", 100)]),
    ("createFile", 1, "POST", "/files", [("", 100)]),
    ("retrieveFile", 1, "GET", "/files/file-abc123", [("", 100)]),
    ("createFineTune", 1, "POST", "/fine-tunes", [("curie", 100)]),
    ("listFineTunes", 1, "GET", "/fine-tunes", [("", 100)]),
]
FAILURES = [  # (outcome, http status, error type, message, weight)
    ("upstream_error", 429, "requests", "Rate limit reached for requests", 45),
    ("upstream_error", 500, "server_error", "The server had an error", 15),
    ("upstream_error", 400, "invalid_request_error", ("This model's maximum context length "
     "is 8192 tokens"), 15),
    ("timeout", 504, "timeout", "The upstream API did not answer in time.", 10),
    ("unreachable", 502, "upstream_unavailable", "The upstream API could not be reached.", 5),
    ("rejected", 400, "invalid_request_error", "'messages' is a required property", 10),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90, help="spread the calls over N days")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=42, help="random seed (same data each run)")
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    parser.add_argument("--reset", action="store_true", help="delete existing calls and keys")
    parser.add_argument("--json", help="write the figures here as JSON")
    return parser.parse_args(argv)


def setup_django(database_url):
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def uuid7_at(ms, rng):
    """A UUIDv7 for the time ``ms`` (what the model's default makes, at that moment)."""
    rand = rng.getrandbits(80)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0x0FFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


_CUMULATIVE = {}


def pick(rng, weighted):
    """One item of a list whose items end with their weight."""
    key = id(weighted)
    if key not in _CUMULATIVE:
        total, cumulative = 0, []
        for item in weighted:
            total += item[-1]
            cumulative.append(total)
        _CUMULATIVE[key] = (weighted, cumulative)
    return rng.choices(weighted, cum_weights=_CUMULATIVE[key][1])[0]


_POOL = []


def sentence(rng, n=None):
    """A sentence from a pool made once (making each one word by word is the slow part);
    about 0.2% of them carry one of the rare words that the search benchmark looks for."""
    if not _POOL:
        maker = random.Random(7)
        for _ in range(20_000):
            words = [maker.choice(WORDS) for _ in range(maker.randint(5, 120))]
            if maker.random() < 0.002:
                words.insert(maker.randrange(len(words)), maker.choice(RARE))
            text = " ".join(words)
            _POOL.append(text[0].upper() + text[1:] + maker.choice(("?", ".", "!")))
    text = rng.choice(_POOL)
    if n is not None:
        text = " ".join(text.split(" ")[:n])
    elif len(text) > 200:
        text = text[:text.find(" ", 120) if text.find(" ", 120) > 0 else 200]
    return text


class Generator:
    """Builds the column values of one call at a time."""

    def __init__(self, rng, users, keys, start, end, price_for):
        self.rng = rng
        self.users = users  # [(user_id, weight)]
        self.keys = keys  # {user_id: [key_id]}
        self.start, self.end = start, end
        self.price_for = price_for
        self.ops = [(op, m, p, models, w) for op, w, m, p, models in OPERATIONS]
        self.recent = []  # ids to replay

    def timestamps(self, count):
        """``count`` sorted moments between start and end, busier by day than by night."""
        span = (self.end - self.start).total_seconds()
        moments = []
        while len(moments) < count:
            t = self.rng.random() * span
            hour = (t / 3600) % 24
            if self.rng.random() < (0.25 + 0.75 * max(0.0, 1 - abs(hour - 14) / 9)):
                moments.append(t)
        moments.sort()
        return [self.start + datetime.timedelta(seconds=t) for t in moments]

    def call(self, created):
        rng = self.rng
        op, method, path, models, _weight = pick(rng, self.ops)
        model = pick(rng, models)[0]
        user_id = pick(rng, self.users)[0]
        key_id = rng.choice(self.keys[user_id])
        row = {
            "id": uuid7_at(int(created.timestamp() * 1000), rng),
            "created": created, "operation": op, "method": method, "path": path, "query": "",
            "model": model, "user_id": user_id, "api_key_id": key_id,
            "mode": "sync", "source": "http", "stream": False, "request_headers": {},
            "response_headers": {}, "response_content_type": "application/json",
            "response_text": "", "stream_events": None, "output_text": "", "error": None,
            "upstream_request_id": f"req_{rng.getrandbits(128):032x}",
            "prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
            "cost_usd": None, "replay_of_id": None, "attempts": [], "attempt_count": 1,
            "idempotency_key": "", "request_hash": "", "task_id": "", "callback": "",
            "target_type_id": None, "target_id": "", "metadata_only": False, "redacted": False,
            "body_purged_at": None, "payload": None, "prompt_preview": "",
        }
        body, answer = self.bodies(op, model, row)
        row["request_body"] = body
        latency = max(30.0, rng.lognormvariate(6.3, 0.7))  # ~550 ms median
        if op in ("listModels", "listFiles", "retrieveFile", "listFineTunes", "createFile",
                  "createModeration"):
            latency /= 4
        row["upstream_latency_ms"] = round(latency, 3)
        row["latency_ms"] = round(latency + rng.uniform(0.6, 3.0), 3)
        row["first_byte_ms"] = round(latency * (0.2 if row["stream"] else 0.97), 3)
        roll = rng.random()
        if roll < 0.05:
            outcome, status, kind, message, _weight = pick(rng, FAILURES)
            row.update(status="failed", outcome=outcome, response_status=status,
                       error={"message": message, "type": kind, "param": None, "code": None},
                       response_body={"error": row_error(message, kind)}
                       if outcome == "upstream_error" else None,
                       prompt_tokens=None, completion_tokens=None, total_tokens=None,
                       cost_usd=None, output_text="", stream_events=None)
            if outcome in ("timeout", "unreachable", "rejected"):
                row["upstream_request_id"] = ""
        elif roll < 0.052:
            row.update(status="cancelled", outcome="cancelled", response_status=None,
                       response_body=None, mode="async", prompt_tokens=None,
                       completion_tokens=None, total_tokens=None, cost_usd=None, output_text="",
                       upstream_request_id="")
        else:
            row.update(status="succeeded", outcome="ok", response_status=200,
                       response_body=answer)
            row["cost_usd"] = self.cost(op, model, row, body, answer)
        row["started_at"] = created
        row["finished_at"] = created + datetime.timedelta(milliseconds=row["latency_ms"])
        if self.recent and rng.random() < 0.01:
            row.update(replay_of_id=rng.choice(self.recent), source="replay", mode="async")
        elif rng.random() < 0.02:
            self.recent.append(row["id"])
            self.recent = self.recent[-500:]
        if row["mode"] == "sync" and rng.random() < 0.03:
            row["mode"] = "async"
        if rng.random() < 0.01:  # a key or operation that records metadata only
            row.update(metadata_only=True, request_body=None, response_body=None,
                       prompt_preview="", output_text="", stream_events=None)
        return row

    def bodies(self, op, model, row):
        rng = self.rng
        if op == "createChatCompletion":
            prompt = sentence(rng)
            messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] \
                if rng.random() < 0.7 else []
            for _ in range(rng.choice((0, 0, 0, 1, 2))):
                messages += [{"role": "user", "content": sentence(rng)},
                             {"role": "assistant", "content": sentence(rng, 30)}]
            messages.append({"role": "user", "content": prompt})
            body = {"model": model, "messages": messages}
            if rng.random() < 0.3:
                body["temperature"] = round(rng.uniform(0, 1.2), 1)
            reply = sentence(rng, rng.randint(10, 120))
            message = {"role": "assistant", "content": reply}
            if rng.random() < 0.05:
                body["tools"] = [{"type": "function", "function": {
                    "name": "lookup_order", "parameters": {
                        "type": "object", "properties": {"order_id": {"type": "string"}}}}}]
                message = {"role": "assistant", "content": None, "tool_calls": [{
                    "id": f"call_{rng.getrandbits(48):012x}", "type": "function",
                    "function": {"name": "lookup_order",
                                 "arguments": json.dumps({"order_id": str(rng.randint(1, 9999))})}
                }]}
                reply = "lookup_order(...)"
            prompt_tokens = sum(len(m["content"].split()) for m in messages) + 8
            completion_tokens = len(reply.split())
            row.update(prompt_preview=prompt[:300], output_text=reply,
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                       total_tokens=prompt_tokens + completion_tokens)
            answer = {"id": f"chatcmpl-{rng.getrandbits(64):016x}", "object": "chat.completion",
                      "created": int(row["created"].timestamp()), "model": model,
                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens,
                                "total_tokens": prompt_tokens + completion_tokens}}
            if rng.random() < 0.2:  # streamed: the events are kept, not a body
                body["stream"] = True
                row.update(stream=True, mode="stream",
                           response_content_type="text/event-stream")
                words = reply.split(" ")
                row["stream_events"] = [json.dumps({"id": answer["id"],
                                                    "object": "chat.completion.chunk",
                                                    "choices": [{"index": 0, "delta": {
                                                        "content": w + " "}}]})
                                        for w in words[:40]]
                return body, None
            return body, answer
        if op == "createEmbedding":
            inputs = [sentence(rng) for _ in range(rng.choice((1, 1, 1, 2, 4)))]
            tokens = sum(len(t.split()) for t in inputs)
            dims = 3072 if model.endswith("large") else 1536
            row.update(prompt_preview=inputs[0][:300], prompt_tokens=tokens,
                       completion_tokens=0, total_tokens=tokens)
            return ({"model": model, "input": inputs if len(inputs) > 1 else inputs[0]},
                    {"object": "list", "model": model, "usage": {"prompt_tokens": tokens,
                                                                  "total_tokens": tokens},
                     "data": [{"object": "embedding", "index": i, "embedding": {
                         "dimensions": dims,
                         "preview": [round(rng.uniform(-.1, .1), 6) for _ in range(8)]}}
                         for i in range(len(inputs))]})
        if op in ("createCompletion", "createEdit"):
            prompt = sentence(rng)
            text = sentence(rng, rng.randint(10, 80))
            tokens = (len(prompt.split()), len(text.split()))
            row.update(prompt_preview=prompt[:300], output_text=text, prompt_tokens=tokens[0],
                       completion_tokens=tokens[1], total_tokens=sum(tokens))
            key = "prompt" if op == "createCompletion" else "instruction"
            return ({"model": model, key: prompt, "max_tokens": 256},
                    {"id": f"cmpl-{rng.getrandbits(64):016x}", "object": "text_completion",
                     "model": model, "choices": [{"index": 0, "text": text,
                                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1],
                               "total_tokens": sum(tokens)}})
        if op == "createModeration":
            text = sentence(rng)
            row["prompt_preview"] = text[:300]
            return ({"input": text, "model": model},
                    {"id": f"modr-{rng.getrandbits(48):012x}", "model": model, "results": [{
                        "flagged": False, "categories": {"hate": False, "violence": False},
                        "category_scores": {"hate": 0.0001, "violence": 0.0003}}]})
        if op == "createImage":
            prompt = sentence(rng)
            n = rng.choice((1, 1, 2))
            row.update(prompt_preview=prompt[:300])
            return ({"prompt": prompt, "model": model, "n": n, "size": "1024x1024",
                     "response_format": "b64_json"},
                    {"created": int(row["created"].timestamp()),
                     "data": [{"b64_json": "<1398100 base64 characters, kept as an artifact>"}
                              for _ in range(n)]})
        if op == "createTranscription":
            text = sentence(rng, rng.randint(20, 150))
            row.update(output_text=text)
            return ({"model": model}, {"text": text, "duration": round(rng.uniform(2, 300), 2)})
        if op in ("createFineTune",):
            return ({"training_file": "file-abc123", "model": model},
                    {"id": f"ft-{rng.getrandbits(48):012x}", "object": "fine-tune",
                     "model": model, "status": "pending"})
        if op == "createFile":
            return ({"purpose": "fine-tune"},
                    {"id": f"file-{rng.getrandbits(48):012x}", "object": "file",
                     "bytes": rng.randint(100, 10**6), "filename": "train.jsonl",
                     "purpose": "fine-tune"})
        items = [{"id": f"{op[4:].lower()}-{i}", "object": "item", "created": 1700000000 + i}
                 for i in range(rng.randint(1, 6))]
        return None, {"object": "list", "data": items}

    def cost(self, op, model, row, body, answer):
        price = self.price_for(model, op)
        if not price:
            return None
        if "image" in price:
            return Decimal(str(price["image"])) * len((answer or {}).get("data") or [1])
        if "minute" in price:
            return (Decimal(str(price["minute"])) * Decimal(str(answer["duration"])) / 60) \
                .quantize(Decimal("0.000001"))
        if not row["prompt_tokens"]:
            return None
        value = (Decimal(str(price.get("input", 0))) * row["prompt_tokens"]
                 + Decimal(str(price.get("output", 0))) * (row["completion_tokens"] or 0)) / 1000
        return value.quantize(Decimal("0.000001"))


def row_error(message, kind):
    return {"message": message, "type": kind, "param": None, "code": None}


def make_users(count, rng):
    """``count`` users and 1-3 keys each; returns ([(user_id, weight)], {user_id: [key ids]})."""
    import hashlib

    from django.contrib.auth import get_user_model

    from openai_django.models import KEY_PREFIX, APIKey

    User = get_user_model()
    name_field = User.USERNAME_FIELD
    names = [f"bench-user-{i:03d}" for i in range(count)]
    existing = set(User._default_manager.filter(**{f"{name_field}__in": names})
                   .values_list(name_field, flat=True))
    new = []
    for name in names:
        if name not in existing:
            user = User(**{name_field: name})
            user.set_unusable_password()
            new.append(user)
    User._default_manager.bulk_create(new, batch_size=500)
    ids = dict(User._default_manager.filter(**{f"{name_field}__in": names})
               .values_list(name_field, "pk"))
    keys = {}
    for name in names:
        user_id = ids[name]
        mine = list(APIKey.objects.filter(user_id=user_id).values_list("pk", flat=True))
        if not mine:
            made = []
            for k in range(rng.choice((1, 1, 2, 3))):
                secret = f"{KEY_PREFIX}bench{rng.getrandbits(128):032x}"
                made.append(APIKey(user_id=user_id, name=f"{name} key {k + 1}",
                                   prefix=secret[:10], last4=secret[-4:],
                                   hashed_key=hashlib.sha256(secret.encode()).hexdigest()))
            mine = [k.pk for k in APIKey.objects.bulk_create(made)]
            if None in mine:  # backends that do not return ids from bulk_create
                mine = list(APIKey.objects.filter(user_id=user_id).values_list("pk", flat=True))
        keys[user_id] = mine
    # A long tail: a few users make most calls.
    weights = [(ids[name], 1.0 / (i + 1) ** 0.9) for i, name in enumerate(names)]
    return weights, keys


class Writer:
    """Writes rows of the call table through the raw cursor, in the field order of the model."""

    def __init__(self, connection):
        from openai_django.models import Call

        self.connection = connection
        self.vendor = connection.vendor
        self.fields = [f for f in Call._meta.concrete_fields]
        self.columns = [f.column for f in self.fields]
        self.table = Call._meta.db_table
        self.converters = [self.converter(f) for f in self.fields]
        # Columns the generator does not set (e.g. added later) get the model's default.
        self.defaults = {f.attname: f.get_default() for f in self.fields}

    def converter(self, field):
        from django.db import models

        ops = self.connection.ops
        if isinstance(field, models.JSONField):
            import orjson

            return lambda v: None if v is None else orjson.dumps(v).decode()
        if isinstance(field, models.UUIDField) or (field.is_relation and field.related_model
                                                   and isinstance(field.target_field,
                                                                  models.UUIDField)):
            if self.vendor == "postgresql":
                return lambda v: v
            return lambda v: None if v is None else v.hex
        if isinstance(field, models.DateTimeField):
            if self.vendor == "postgresql":
                return lambda v: v
            return ops.adapt_datetimefield_value
        if isinstance(field, models.DecimalField):
            return lambda v: None if v is None else str(v)
        return lambda v: v

    def values(self, row):
        defaults = self.defaults
        return tuple(convert(row[field.attname] if field.attname in row
                             else defaults[field.attname])
                     for field, convert in zip(self.fields, self.converters))

    def write(self, rows):
        quote = self.connection.ops.quote_name
        columns = ", ".join(quote(c) for c in self.columns)
        with self.connection.cursor() as cursor:
            if self.vendor == "postgresql":
                raw = cursor.cursor
                with raw.copy(f"COPY {quote(self.table)} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(self.values(row))
            else:
                marks = ", ".join(["%s"] * len(self.columns))
                cursor.executemany(f"INSERT INTO {quote(self.table)} ({columns}) "
                                   f"VALUES ({marks})", [self.values(r) for r in rows])


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    setup_django(args.database_url)
    from django.core.management import call_command
    from django.db import connection, transaction

    from openai_django.models import APIKey, Call
    from openai_django.pricing import price_for

    call_command("migrate", verbosity=0)
    if args.reset:
        with transaction.atomic():
            Call.objects.all().delete() if connection.vendor != "postgresql" else \
                connection.cursor().execute(
                    f"TRUNCATE {connection.ops.quote_name(Call._meta.db_table)} CASCADE")
            APIKey.objects.filter(name__startswith="bench-user-").delete()
    have = Call.objects.order_by().values("pk")[: args.calls].count()
    figures = {"vendor": connection.vendor, "calls": args.calls}
    if have >= args.calls:
        logger.info("%s already holds %s calls: nothing to do", connection.vendor, have)
        figures.update(skipped_existing=have, seconds=0)
    else:
        rng = random.Random(args.seed)
        started = time.perf_counter()
        users, keys = make_users(args.users, rng)
        end = datetime.datetime.now(datetime.timezone.utc)
        start = end - datetime.timedelta(days=args.days)
        generator = Generator(rng, users, keys, start, end,
                              price_cache(price_for))
        writer = Writer(connection)
        todo = args.calls - have
        moments = generator.timestamps(todo)
        done = 0
        for offset in range(0, todo, args.batch):
            rows = [generator.call(created) for created in moments[offset:offset + args.batch]]
            with transaction.atomic():
                writer.write(rows)
            done += len(rows)
            if done % (args.batch * 20) == 0 or done == todo:
                rate = done / (time.perf_counter() - started)
                logger.info("%s: %s/%s calls (%.0f rows/s)", connection.vendor, done, todo, rate)
        analyze_started = time.perf_counter()
        with connection.cursor() as cursor:
            # What autovacuum does to a table that took inserts: statistics, and on PostgreSQL
            # the visibility map that lets a covering index answer without the rows.
            cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
        seconds = time.perf_counter() - started
        figures.update(seconds=round(seconds, 1), rows_per_s=round(todo / seconds),
                       analyze_s=round(time.perf_counter() - analyze_started, 1), written=todo)
        logger.info("seeded %s calls in %.0f s", todo, seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    logger.info("figures: %s", json.dumps(figures))


def price_cache(price_for):
    from openai_django import kinds
    from openai_django.spec import get_registry

    cache = {}

    def cached(model, operation):
        key = (model, operation)
        if key not in cache:
            basis = kinds.of(get_registry()[operation]).price_basis
            cache[key] = price_for(model, basis) if basis else None
        return cache[key]

    return cached


if __name__ == "__main__":
    main()
