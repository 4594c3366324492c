// What the console makes of a query result: the chart that fits its column types, and its CSV.

const MAX_LINES = 6; // numeric columns drawn as lines
const MAX_BARS = 50; // categories drawn as bars (the table has every row)

const NUMERIC = /^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|FLOAT|DOUBLE|REAL|DECIMAL.*)$/i;
const TIME = /^(DATE|TIMESTAMP.*|TIMESTAMPTZ)$/i;
const TEXT = /^(VARCHAR|TEXT|STRING|UUID|ENUM.*)$/i;

/**
 * A line chart when there is a time column and numeric columns (x = time, sorted), a bar chart when there is a
 * text column and a numeric column (x = the text, first MAX_BARS rows in the result's order), else null.
 */
export function chartOf(result) {
  const cols = result.columns.map((c, i) => ({ ...c, i }));
  const numeric = cols.filter((c) => NUMERIC.test(c.type));
  if (!numeric.length || !result.rows.length) return null;
  const time = cols.find((c) => TIME.test(c.type));
  if (time) {
    const ys = numeric.slice(0, MAX_LINES);
    const rows = result.rows
      .map((r) => [Date.parse(r[time.i]) / 1000, r])
      .filter(([t]) => Number.isFinite(t))
      .sort((a, b) => a[0] - b[0]);
    return {
      kind: "line",
      x: time,
      ys,
      data: [rows.map(([t]) => t), ...ys.map((y) => rows.map(([, r]) => number(r[y.i])))],
    };
  }
  const text = cols.find((c) => TEXT.test(c.type));
  if (!text) return null;
  const rows = result.rows.slice(0, MAX_BARS);
  return {
    kind: "bar",
    x: text,
    ys: numeric,
    categories: rows.map((r) => (r[text.i] === "" || r[text.i] == null ? "(empty)" : String(r[text.i]))),
    data: [rows.map((_, i) => i)],
    series: Object.fromEntries(numeric.map((y) => [y.name, rows.map((r) => number(r[y.i]))])),
    clipped: result.rows.length > MAX_BARS,
  };
}

export function isNumericType(type) {
  return NUMERIC.test(type);
}

function number(v) {
  return v === null || v === undefined || v === "" ? null : Number(v);
}

/** RFC 4180 CSV of the whole result (header row first). A text cell a spreadsheet would run as a formula
 * (=, +, -, @, tab, CR first) gets a leading ' so opening the file cannot execute anything. */
export function toCsv(result) {
  const lines = [result.columns.map((c) => cell(c.name)).join(",")];
  for (const row of result.rows) lines.push(row.map(cell).join(","));
  return `${lines.join("\r\n")}\r\n`;
}

function cell(value) {
  if (value === null || value === undefined) return "";
  let text = typeof value === "object" ? JSON.stringify(value) : String(value);
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text) && !/^[-+]?\d/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
