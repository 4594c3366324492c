// The live charts' data: a ring of one-second buckets over the last five minutes, fed by route events and
// seeded from the server's history. Memory is fixed: SECONDS buckets, each keeping at most MAX_SAMPLES
// latencies (a uniform reservoir sample beyond that, so percentiles stay fair under any load).

export const SECONDS = 300;
const MAX_SAMPLES = 256;

function emptyBucket(t) {
  return { t, count: 0, errors: 0, cost: 0, latencies: [], seen: 0, p50: null, p95: null };
}

export class RollingWindow {
  constructor(now = Date.now()) {
    this.buckets = Array.from({ length: SECONDS }, () => emptyBucket(-1));
    this.startedAt = Math.floor(now / 1000); // seconds before this come from the seed, the rest from events
  }

  bucket(t) {
    const b = this.buckets[t % SECONDS];
    if (b.t !== t) Object.assign(b, emptyBucket(t)); // an old second: reuse its slot
    return b;
  }

  /** A route_success / route_error event, counted in the second it arrived. */
  add(event, now = Date.now()) {
    const b = this.bucket(Math.floor(now / 1000));
    b.count += 1;
    if (event.type === "route_error") b.errors += 1;
    b.cost += Number(event.cost_usd) || 0;
    const latency = Number(event.latency_ms);
    if (Number.isFinite(latency)) {
      b.seen += 1;
      if (b.latencies.length < MAX_SAMPLES) b.latencies.push(latency);
      else {
        const j = Math.floor(Math.random() * b.seen);
        if (j < MAX_SAMPLES) b.latencies[j] = latency;
      }
    }
  }

  /** History for the seconds before the panel opened: {t (unix s), count?, errors?, cost?, p50?, p95?}. */
  seed(points, now = Date.now()) {
    const oldest = Math.floor(now / 1000) - SECONDS + 1;
    for (const p of points) {
      if (p.t < oldest || p.t >= this.startedAt) continue; // events cover the rest: never count twice
      const b = this.bucket(p.t);
      for (const k of ["count", "errors", "cost"]) if (p[k] != null) b[k] = p[k];
      for (const k of ["p50", "p95"]) if (p[k] != null) b[k] = p[k];
    }
  }

  /** Chart columns over the last SECONDS seconds: xs, requests/s, error rate, p50, p95, cost per minute. */
  series(now = Date.now()) {
    const end = Math.floor(now / 1000);
    const xs = [], rps = [], errorRate = [], p50 = [], p95 = [], costPerMin = [];
    let costWindow = 0;
    const costs = [];
    for (let t = end - SECONDS + 1; t <= end; t++) {
      const slot = this.buckets[t % SECONDS];
      const b = slot.t === t ? slot : null;
      const count = b ? b.count : 0;
      xs.push(t);
      rps.push(count);
      errorRate.push(count ? b.errors / count : null);
      const [q50, q95] = b && b.latencies.length ? percentiles(b.latencies) : [b?.p50 ?? null, b?.p95 ?? null];
      p50.push(q50);
      p95.push(q95);
      const cost = b ? b.cost : 0;
      costs.push(cost);
      costWindow += cost;
      if (costs.length > 60) costWindow -= costs[costs.length - 61];
      costPerMin.push(costWindow);
    }
    return { xs, rps, errorRate, p50, p95, costPerMin };
  }

  /** Totals over the last `seconds`: requests, errors, cost, and p95 of the latencies sampled. */
  totals(seconds = 60, now = Date.now()) {
    const end = Math.floor(now / 1000);
    let requests = 0, errors = 0, cost = 0;
    const latencies = [];
    for (let t = end - seconds + 1; t <= end; t++) {
      const b = this.buckets[t % SECONDS];
      if (b.t !== t) continue;
      requests += b.count;
      errors += b.errors;
      cost += b.cost;
      latencies.push(...b.latencies);
    }
    return { requests, errors, cost, p95: latencies.length ? percentiles(latencies)[1] : null };
  }
}

/** Nearest-rank p50 and p95 (an observed latency, like the server's quantile_disc). */
export function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (q) => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
  return [rank(0.5), rank(0.95)];
}
