// The panels, in navigation order. A panel module's default export is
//   { id, title, group, view }   where view({ route }) is a Preact component and route = { path, query }.
import analystConsole from "./console.js";
import health from "./health.js";
import live from "./live.js";
import trends from "./trends.js";

export const PANELS = [live, health, trends, analystConsole];
