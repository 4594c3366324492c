// The panels, in navigation order. A panel module's default export is
//   { id, title, group, view }   where view({ route }) is a Preact component and route = { path, query }.
import health from "./health.js";

export const PANELS = [health];
