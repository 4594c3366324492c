// A table over rows the page already holds (an analyst result, a trend): sorting applies to all the rows, then
// they are shown a page at a time. For lists that live on the server use ui.js's Table with its Pager instead.
import { compareValues, fmt, html, Pager, SortHeader } from "./ui.js";
import { useEffect, useMemo, useState } from "../vendor/preact-htm.js";

/** columns: [{key, label, num?, render?(value, row)}]; a row is an object or an array (key = index). */
export function LocalTable({ columns, rows, pageSize = 50, caption, empty = "No rows." }) {
  const [sort, setSort] = useState({ key: null, dir: 1 });
  const [offset, setOffset] = useState(0);
  useEffect(() => setOffset(0), [rows]);
  const sorted = useMemo(() => {
    if (sort.key === null) return rows;
    return [...rows].sort((a, b) => compareValues(a[sort.key], b[sort.key], true) * sort.dir);
  }, [rows, sort]);
  const page = sorted.slice(offset, offset + pageSize);
  const toggle = (key) => {
    setSort((s) => ({ key, dir: s.key === key ? -s.dir : 1 }));
    setOffset(0);
  };
  return html`<div class="table-wrap">
      <table>
        ${caption ? html`<caption>${caption}</caption>` : ""}
        <thead>
          <${SortHeader} columns=${columns} sort=${sort} onSort=${toggle} />
        </thead>
        <tbody>
          ${page.length === 0
            ? html`<tr><td colspan=${columns.length} class="muted">${empty}</td></tr>`
            : page.map(
                (row, i) => html`<tr key=${offset + i}>
                  ${columns.map(
                    (c) => html`<td class=${c.num ? "num" : ""} data-col=${c.label}>
                      ${c.render ? c.render(row[c.key], row) : fmt(row[c.key])}
                    </td>`,
                  )}
                </tr>`,
              )}
        </tbody>
      </table>
    </div>
    ${rows.length > pageSize &&
    html`<${Pager} offset=${offset} limit=${pageSize} count=${page.length} total=${rows.length} onPage=${setOffset} />`}`;
}
