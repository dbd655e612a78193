"""Native parse of JSON-lines dumps (Goodreads): Spark's JSON reader with an explicit schema, cleaning in
Spark SQL functions, Python only for the rows and values that need it.

One pass over the re-chunked lines (``source_uri, line_no, raw, valid_utf8``) gives one row per line in
``job.PARSED_SCHEMA``, equal to what ``parsers.parse_line`` gives for that line, ``content_hash`` included
(delta mode compares hashes across versions, so both paths must agree byte for byte).

How a line is handled:

1. ``from_json("[" + line + "]", array<struct<schema>>)`` in PERMISSIVE mode. Wrapping the line in an
   array makes the JVM parser see the whole line: a malformed line, a field of the wrong JSON type (an
   object where the schema has a list) and anything after the record's closing brace (``{...}{...}``,
   which a plain ``from_json`` silently drops) all give a null array or one of size != 1.
2. A line is *native* when it parsed to one record, starts with ``{`` and ends with ``}``, is valid UTF-8,
   holds no ``\\uD8xx``-style surrogate escape, and none of the values the extractor reads is *ambiguous*.
   A schema ``string`` field takes any JSON value and renders a non-string one as text (``true``,
   ``{"a":1}``, ``1.0E-4``, ``"NaN"``), where the Python extractor accepts some non-strings (integers,
   finite floats as ``str(x)``) and rejects others (``bad_field``). A value that could be such a rendering
   and where the two could disagree is ambiguous: it starts with ``{``, ``[`` or ``"``, is ``true``/``false``
   where a boolean is refused, or looks like a float (ids, URLs: any number) that Java and Python may
   spell differently. Ids and other values copied into ``attrs`` must be plain (visible ASCII ids, no
   control characters), so the JSON and the strip below are exact.
3. Every other line (malformed, ambiguous, too long, bad UTF-8 ...) goes to the exact Python parser
   (``parse_line``) in a vectorised pandas UDF that receives null for native lines, so it costs a few
   bytes per native line. These are the quarantine rows, with the same reasons and details as before.
4. Cleaning: tags and whitespace with ``regexp_replace``; values holding ``&`` (entities) or anything
   outside printable ASCII (NFC, Unicode whitespace) are cleaned by ``parsers.clean_text`` in the same
   UDF. ``attrs`` is built as the exact text of ``json.dumps(attrs, sort_keys=True, ensure_ascii=False)``
   and ``content_hash`` with Spark's ``sha1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from g2i_core.ingest.parsers import NAMESPACE, NOPHOTO_MARKERS, RELATIONS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

NATIVE_SOURCES = ("goodreads",)

GOODREADS_SCHEMA = (
    "book_id string, title string, title_without_series string, description string, image_url string, "
    "similar_books array<string>, series array<string>, authors array<struct<author_id:string>>, "
    "popular_shelves array<struct<name:string>>, work_id string, publication_year string, language_code string, "
    "is_ebook string, average_rating string, ratings_count string, num_pages string, publisher string")
GOODREADS_TEXT_ATTRS = ("work_id", "publication_year", "language_code", "average_rating", "ratings_count",
                        "num_pages", "publisher")
# Spark's text for a JSON float is Java's Double.toString: fixed notation for 1e-3 <= |x| < 1e7, else "E".
FLOAT_RENDERING = r"^-?[0-9]+\.[0-9]+(E-?[0-9]+)?$"
NUMBER_RENDERING = r"^-?[0-9]+(\.[0-9]+(E-?[0-9]+)?)?$"
PLAIN_ID = r"^[!-~]*$"  # visible ASCII: Python's strip() is a no-op on it
NEEDS_PYTHON_CLEAN = r"[^\t\n\r\x20-\x7e]"  # non-ASCII (NFC, Unicode spaces) or odd control characters
CONTROL = r"[\x00-\x1f]"
FALLBACK_TYPE = ("node_id string, title string, text string, image_url string, has_real_image boolean, "
                 "attrs string, completeness int, content_hash string, edges string, reason string, "
                 "detail string, raw string, clean_title string, clean_description string, "
                 "description_json string")
EDGES_TYPE = "array<struct<dst:string,relation:string>>"


# ---- which values the native path may take (see the module docstring, point 2) ------------------------------
def _rendered_container(c: "Column") -> "Column":
    return c.startswith("{") | c.startswith("[") | c.startswith('"')


def _short_match(c: "Column", pattern: str) -> "Column":
    from pyspark.sql import functions as F

    return (F.length(c) <= 40) & c.rlike(pattern)  # a rendered number is short: skip the regex on long text


def _odd_text(c: "Column") -> "Column":
    """Text that takes numbers (``_text(numbers=True)``): floats only where Java and Python spell them alike."""
    from pyspark.sql import functions as F

    odd_float = _short_match(c, FLOAT_RENDERING) & (c.contains("E") | (F.length(c) > 16))
    return c.isNotNull() & (_rendered_container(c) | c.isin("true", "false") | odd_float)


def _odd_scalar(c: "Column") -> "Column":
    """Text copied into ``attrs`` as it is: also no control characters (they change the JSON escaping)."""
    return _odd_text(c) | (c.isNotNull() & c.rlike(CONTROL))


def _odd_id(c: "Column") -> "Column":
    """An id (integers only) that is not a plain visible-ASCII token."""
    return c.isNotNull() & (_rendered_container(c) | c.isin("true", "false") | _short_match(c, FLOAT_RENDERING)
                            | ~c.rlike(PLAIN_ID))


def _odd_url(c: "Column") -> "Column":
    return c.isNotNull() & (_rendered_container(c) | c.isin("true", "false") | _short_match(c, NUMBER_RENDERING)
                            | ~c.rlike(PLAIN_ID))


def _odd_flag(c: "Column") -> "Column":
    return c.isNotNull() & (_rendered_container(c) | _short_match(c, NUMBER_RENDERING))


# ---- exact Python spellings ---------------------------------------------------------------------------------------
def _json_string(c: "Column") -> "Column":
    """``json.dumps(c, ensure_ascii=False)`` for a string without control characters."""
    from pyspark.sql import functions as F

    escaped = F.replace(F.replace(c, F.lit("\\"), F.lit("\\\\")), F.lit('"'), F.lit('\\"'))
    return F.when(c.isNull(), F.lit("null")).otherwise(F.concat(F.lit('"'), escaped, F.lit('"')))


def _json_list(c: "Column") -> "Column":
    from pyspark.sql import functions as F

    return F.concat(F.lit("["), F.array_join(F.transform(c, _json_string), ", "), F.lit("]"))


def clean_native(c: "Column") -> "Column":
    """``parsers.clean_text`` for printable-ASCII text without ``&``: tags out, whitespace collapsed."""
    from pyspark.sql import functions as F

    no_tags = F.regexp_replace(F.coalesce(c, F.lit("")), "<[^>]{0,200}>", " ")
    return F.trim(F.regexp_replace(no_tags, r"\s+", " "))  # trim: only spaces remain after the collapse


def _needs_python_clean(c: "Column") -> "Column":
    return c.isNotNull() & (c.contains("&") | c.rlike(NEEDS_PYTHON_CLEAN))


# ---- the Python part: whole lines the native path declines, and text only Python can clean ---------------------
def _python_part(source: str):
    import warnings

    from pyspark.sql.functions import PandasUDFType, pandas_udf

    def python_part(raw, line_no, title, description):  # pd.Series each -> pd.DataFrame (no hints: see below)
        import json

        import pandas as pd

        from g2i_core.ingest.parsers import clean_text, parse_line

        n = len(raw)
        out = {name: [None] * n for name in ("node_id", "title", "text", "image_url", "has_real_image", "attrs",
                                             "completeness", "content_hash", "edges", "reason", "detail", "raw",
                                             "clean_title", "clean_description", "description_json")}
        for i in raw.index[raw.notna()]:
            row = parse_line(source, raw[i], int(line_no[i]))
            for key in ("node_id", "title", "text", "image_url", "has_real_image", "attrs", "completeness",
                        "content_hash", "reason", "detail", "raw"):
                out[key][i] = row.get(key)
            out["edges"][i] = json.dumps(row["edges"])
        for i in title.index[title.notna()]:
            out["clean_title"][i] = clean_text(title[i])
        for i in description.index[description.notna()]:
            cleaned = clean_text(description[i])
            out["clean_description"][i] = cleaned
            out["description_json"][i] = json.dumps(cleaned, ensure_ascii=False)
        frame = pd.DataFrame(out)
        frame["completeness"] = frame["completeness"].astype("Int32")
        frame["has_real_image"] = frame["has_real_image"].astype("boolean")
        return frame

    with warnings.catch_warnings():  # the type-hint form needs pandas importable where hints are evaluated
        warnings.simplefilter("ignore", UserWarning)
        return pandas_udf(python_part, FALLBACK_TYPE, PandasUDFType.SCALAR)


# ---- Goodreads ------------------------------------------------------------------------------------------------------
def parse_lines_native(lines: "DataFrame", source: str) -> "DataFrame":
    """(source_uri, line_no, raw, valid_utf8) -> job.PARSED_SCHEMA rows, one per line."""
    from pyspark.sql import functions as F

    if source not in NATIVE_SOURCES:
        raise ValueError(f"no native parser for {source!r}; native: {NATIVE_SOURCES}")
    text = F.col("raw").cast("string")
    records = F.from_json(F.concat(F.lit("["), text, F.lit("]")), f"array<struct<{GOODREADS_SCHEMA}>>",
                          {"mode": "PERMISSIVE", "allowSingleQuotes": "false"})
    df = lines.select("source_uri", "line_no", "raw", "valid_utf8", records.alias("_recs"))
    r = F.col("_rec")
    df = df.withColumn("_rec", F.when(F.size("_recs") == 1, F.col("_recs")[0])).drop("_recs")

    book_id, title, short_title = r["book_id"], r["title"], r["title_without_series"]
    description, url, flag = r["description"], r["image_url"], r["is_ebook"]
    def any_odd(array: "Column", check) -> "Column":  # exists() of a missing list is null: such rows go to Python
        return F.exists(array, check)

    odd = (_odd_id(book_id) | _odd_text(title) | _odd_text(short_title) | _odd_text(description) | _odd_url(url)
           | _odd_flag(flag) | any_odd(r["similar_books"], _odd_id) | any_odd(r["series"], _odd_id)
           | any_odd(r["authors"], lambda a: a.isNull() | _odd_scalar(a["author_id"]))
           | any_odd(r["popular_shelves"], lambda s: s.isNull() | _odd_scalar(s["name"])))
    for name in GOODREADS_TEXT_ATTRS:
        odd = odd | _odd_scalar(r[name])
    surrogate = F.instr(text, "\\ud") > 0
    surrogate = surrogate | (F.instr(text, "\\uD") > 0)
    native = (r.isNotNull() & F.col("valid_utf8") & text.startswith("{")
              & text.endswith("}") & ~surrogate & book_id.rlike(r"^[!-~]+$")
              & ~F.coalesce(odd, F.lit(True)))
    title_src = F.coalesce(F.when(short_title != "", short_title), title)
    df = df.select("source_uri", "line_no", "raw", r.alias("rec"), native.alias("native"),
                   title_src.alias("title_src"))
    r, native, title_src = F.col("rec"), F.col("native"), F.col("title_src")
    py = _python_part(source)(F.when(~native, F.col("raw")), F.col("line_no"),
                              F.when(native & _needs_python_clean(title_src), title_src),
                              F.when(native & _needs_python_clean(r["description"]), r["description"]))
    df = df.select("source_uri", "line_no", "rec", "native", "title_src", py.alias("py"))
    return _goodreads_columns(df)


def _goodreads_columns(df: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    r, py, native = F.col("rec"), F.col("py"), F.col("native")
    ns = NAMESPACE["goodreads"] + ":"
    relation = RELATIONS["goodreads"][0]
    title = F.when(py["clean_title"].isNotNull(), py["clean_title"]).otherwise(clean_native(F.col("title_src")))
    description = F.when(py["clean_description"].isNotNull(), py["clean_description"]).otherwise(
        clean_native(r["description"]))
    description_json = F.coalesce(py["description_json"], _json_string(description))
    url = F.when(r["image_url"] != "", r["image_url"])
    targets = F.filter(F.array_distinct(F.filter(r["similar_books"], lambda x: x.isNotNull() & (x != ""))),
                       lambda x: x != r["book_id"])
    series = F.filter(r["series"], lambda x: x.isNotNull() & (x != ""))
    authors = F.transform(r["authors"], lambda a: a["author_id"])
    shelves = F.slice(F.transform(r["popular_shelves"], lambda s: s["name"]), 1, 10)
    entries = {name: (r[name].isNotNull() & (r[name] != ""), _json_string(r[name])) for name in GOODREADS_TEXT_ATTRS}
    entries.update({
        "authors": (F.coalesce(F.size(authors), F.lit(0)) > 0, _json_list(authors)),
        "is_ebook": (F.lit(True), F.when(r["is_ebook"] == "true", F.lit("true")).otherwise(F.lit("false"))),
        "shelves": (F.coalesce(F.size(shelves), F.lit(0)) > 0, _json_list(shelves)),
        "series": (F.coalesce(F.size(series), F.lit(0)) > 0, _json_list(series)),
        "description": (F.col("_description") != "", F.col("_description_json")),
    })
    keys = sorted(entries)
    attrs = F.concat(F.lit("{"), F.concat_ws(", ", *[F.when(entries[k][0], F.concat(F.lit(f'"{k}": '), entries[k][1]))
                                                    for k in keys]), F.lit("}"))
    present = sum(F.when(entries[k][0], 1).otherwise(0) for k in keys)
    df = df.withColumns({"_title": title, "_description": description, "_description_json": description_json,
                         "_url": url, "_targets": F.coalesce(targets, F.array().cast("array<string>"))})
    df = df.withColumn("_attrs", attrs)
    t, d, u, tg = F.col("_title"), F.col("_description"), F.col("_url"), F.col("_targets")
    links = F.array_sort(F.transform(tg, lambda x: F.concat(F.lit(f"{relation}>"), x)))
    content_hash = F.sha1(F.concat_ws("\x1f", t, F.coalesce(u, F.lit("")), F.col("_attrs"), links).cast("binary"))
    real_image = u.isNotNull()
    for marker in NOPHOTO_MARKERS:
        real_image = real_image & ~u.contains(marker)
    edges = F.transform(tg, lambda x: F.struct(F.concat(F.lit(ns), x).alias("dst"), F.lit(relation).alias("relation")))
    completeness = (present + F.when(t != "", 1).otherwise(0) + F.when(u.isNotNull(), 1).otherwise(0)
                    + F.size(tg)).cast("int")

    def pick(native_value, fallback):
        return F.when(native, native_value).otherwise(fallback)

    return df.select(
        "source_uri", "line_no",
        pick(F.concat(F.lit(ns), r["book_id"]), py["node_id"]).alias("node_id"),
        pick(t, py["title"]).alias("title"),
        pick(F.when(t != "", t).otherwise(F.substring(d, 1, 300)), py["text"]).alias("text"),
        pick(u, py["image_url"]).alias("image_url"),
        pick(real_image, py["has_real_image"]).alias("has_real_image"),
        pick(F.col("_attrs"), py["attrs"]).alias("attrs"),
        pick(completeness, py["completeness"]).alias("completeness"),
        pick(content_hash, py["content_hash"]).alias("content_hash"),
        pick(edges, F.from_json(py["edges"], EDGES_TYPE)).alias("edges"),
        pick(F.lit(None).cast("string"), py["reason"]).alias("reason"),
        pick(F.lit(None).cast("string"), py["detail"]).alias("detail"),
        pick(F.lit(None).cast("string"), py["raw"]).alias("raw"),
    )
