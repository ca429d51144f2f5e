// What the unit tests exercise: the UI's pure logic, built for node by unit/run.mjs.
export { SseParser } from '../src/stream';
export { diffRows } from '../src/Diff';
export { displayPath, usefulErrors } from '../src/editor';
export { appendNew, matches, EMPTY } from '../src/logfilter';
