// The panels, in navigation order (their groups appear in the order of their first panel). A panel module's
// default export is { id, title, group, view } where view({ route }) is a Preact component and
// route = { path, query }.
import aliases from "./aliases.js";
import analystConsole from "./console.js";
import health from "./health.js";
import live from "./live.js";
import models from "./models.js";
import providers from "./providers.js";
import routing from "./routing.js";
import tenants from "./tenants.js";
import trends from "./trends.js";

export const PANELS = [live, health, providers, models, aliases, routing, tenants, trends, analystConsole];
