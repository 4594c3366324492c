// uPlot charts as a Preact component: the plot is made once per set of series, fed new data in place
// (setData, no rebuild), resized with its box, and destroyed on unmount.
import uPlot from "../vendor/uplot.js";
import { html, useEffect, useRef } from "../vendor/preact-htm.js";

const PALETTE = ["#2f6feb", "#1f883d", "#cf222e", "#b7791f", "#8250df", "#0a7ea4", "#bf3989", "#57606a"];

/** The i-th series colour (the same index gets the same colour in every chart). */
export function colour(i) {
  return PALETTE[i % PALETTE.length];
}

/**
 * A chart. series: [{label, stroke?, dash?, fill?}] for the y columns; data: [xs, ys1, ys2, ...] (xs in unix
 * seconds unless `categories` is given: then xs are 0..n-1 and the axis shows categories[i], drawn as bars).
 * yFormat(v) labels the y axis and the legend values.
 */
export function Chart({ title, series, data, height = 220, yFormat = defaultFormat, categories, summary }) {
  const box = useRef(null);
  const plot = useRef(null);
  const key = JSON.stringify([series.map((s) => s.label), !!categories, title]);

  useEffect(() => {
    const el = box.current;
    const opts = options({ series, height, yFormat, categories, width: el.clientWidth || 600 });
    plot.current = new uPlot(opts, data, el);
    const observer = new ResizeObserver(() => {
      if (plot.current && el.clientWidth) plot.current.setSize({ width: el.clientWidth, height });
    });
    observer.observe(el);
    return () => {
      observer.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, [key, height]);

  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [data]);

  return html`<figure class="chart" aria-label=${title}>
    <figcaption>${title}${summary ? html` <span class="muted">${summary}</span>` : ""}</figcaption>
    <div ref=${box} class="chart-box"></div>
  </figure>`;
}

function options({ series, height, yFormat, categories, width }) {
  const bars = categories ? uPlot.paths.bars({ size: [0.6, 60] }) : null;
  return {
    width,
    height,
    cursor: { drag: { x: !categories, y: false } },
    legend: { live: true },
    scales: { x: { time: !categories, range: categories ? undefined : padSingle }, y: { range: (u, min, max) => [Math.min(0, min ?? 0), niceMax(max)] } },
    axes: [
      categories
        ? { values: (u, splits) => splits.map((i) => shorten(categories[i] ?? "")), gap: 4, size: 50 }
        : {},
      { values: (u, splits) => splits.map(yFormat), size: 70 },
    ],
    series: [
      categories ? { label: "", value: (u, i) => (i == null ? "" : (categories[i] ?? "")) } : { label: "time" },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.stroke || colour(i),
        width: s.width || 1.5,
        dash: s.dash,
        fill: categories ? `${s.stroke || colour(i)}aa` : s.fill,
        paths: bars || undefined,
        points: { show: categories ? false : sparse },
        spanGaps: false,
        value: (u, v) => (v == null ? "—" : yFormat(v)),
      })),
    ],
  };
}

/** One point in time: uPlot stretches the axis over years (a day in ms read as seconds); show a minute either side. */
function padSingle(u, min, max) {
  const xs = u.data[0] || [];
  return xs.length === 1 ? [xs[0] - 60, xs[0] + 60] : [min, max];
}

/** Dots on a line when its points are few (a lone bucket between gaps would otherwise not show at all). */
function sparse(u, seriesIdx) {
  let n = 0;
  for (const v of u.data[seriesIdx] || []) if (v != null && ++n > 60) return false;
  return true;
}

function niceMax(max) {
  if (max == null || !Number.isFinite(max) || max <= 0) return 1;
  return max * 1.1;
}

function shorten(text) {
  const s = String(text);
  return s.length > 14 ? `${s.slice(0, 13)}…` : s;
}

function defaultFormat(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (a === 0 || a >= 1) return `${+v.toFixed(2)}`;
  return v.toPrecision(2);
}

export { defaultFormat as shortNumber };

/** Dollars on an axis: small amounts keep two significant digits. */
export function axisUsd(v) {
  if (v == null) return "";
  return v === 0 ? "$0" : Math.abs(v) < 0.01 ? `$${v.toPrecision(2)}` : `$${defaultFormat(v)}`;
}
