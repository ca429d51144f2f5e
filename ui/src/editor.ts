// The config editor: CodeMirror 6 with JSON syntax, a parse linter, and a JSON Schema linter
// (the schema of GET /_kairos/config/schema, validated by @cfworker/json-schema, which
// interprets the schema instead of compiling it with eval: the CSP forbids eval). Each schema
// error is placed on the JSON node it names, found in the editor's syntax tree.

import { EditorState, type Extension } from '@codemirror/state';
import { EditorView, drawSelection, highlightActiveLine, keymap, lineNumbers } from '@codemirror/view';
import { defaultKeymap, history, historyKeymap } from '@codemirror/commands';
import { bracketMatching, defaultHighlightStyle, foldGutter, indentOnInput, syntaxHighlighting, syntaxTree } from '@codemirror/language';
import { json, jsonParseLinter } from '@codemirror/lang-json';
import { linter, lintGutter, setDiagnostics, type Diagnostic } from '@codemirror/lint';
import { highlightSelectionMatches, searchKeymap } from '@codemirror/search';
import { Validator, type OutputUnit } from '@cfworker/json-schema';
import type { SyntaxNode } from '@lezer/common';

/** One problem found in the editor's text, with its 1-based line. */
export interface Problem {
  line: number;
  path: string;
  message: string;
  from: number;
  to: number;
  source: 'syntax' | 'schema' | 'server';
}

/** `#/routes/0/upstream` -> `routes[0].upstream` (the gateway's own path style). */
export function displayPath(segments: string[]): string {
  let out = '';
  for (const s of segments) {
    if (/^\d+$/.test(s)) out += `[${s}]`;
    else out += out ? `.${s}` : s;
  }
  return out || '(root)';
}

function pointerSegments(loc: string): string[] {
  return loc
    .replace(/^#\/?/, '')
    .split('/')
    .filter((s) => s !== '')
    .map((s) => decodeURIComponent(s).replace(/~1/g, '/').replace(/~0/g, '~'));
}

function valueChildren(node: SyntaxNode): SyntaxNode[] {
  const out: SyntaxNode[] = [];
  for (let c = node.firstChild; c; c = c.nextSibling) {
    if (!['[', ']', '{', '}', ',', ':', '⚠'].includes(c.name)) out.push(c);
  }
  return out;
}

/** The syntax node of the JSON value at `segments` (or the deepest one found on the way). */
export function nodeAt(state: EditorState, segments: string[]): { node: SyntaxNode; found: boolean; key?: SyntaxNode } {
  const top = syntaxTree(state).topNode;
  let node: SyntaxNode = top.firstChild ?? top;
  let key: SyntaxNode | undefined;
  for (const seg of segments) {
    let next: SyntaxNode | undefined;
    if (node.name === 'Object') {
      for (const prop of valueChildren(node)) {
        const name = prop.getChild('PropertyName');
        if (!name) continue;
        let text = state.sliceDoc(name.from, name.to);
        try {
          text = JSON.parse(text);
        } catch {
          /* keep the raw text */
        }
        if (text === seg) {
          key = name;
          next = valueChildren(prop).find((c) => c.name !== 'PropertyName');
          break;
        }
      }
    } else if (node.name === 'Array' && /^\d+$/.test(seg)) {
      next = valueChildren(node)[Number(seg)];
      key = undefined;
    }
    if (!next) return { node, found: false, key };
    node = next;
  }
  return { node, found: true, key };
}

/** The schema errors that say something (not the "a subschema had errors" wrappers). */
export function usefulErrors(errors: OutputUnit[]): OutputUnit[] {
  const wrappers = new Set(['properties', 'items', 'prefixItems', '$ref', '$dynamicRef', 'allOf', 'anyOf', 'oneOf', 'unevaluatedProperties', 'unevaluatedItems', 'then', 'else', 'if', 'dependentSchemas']);
  const deeper = (loc: string) => errors.some((e) => e.instanceLocation.startsWith(`${loc}/`));
  const seen = new Set<string>();
  return errors.filter((e) => {
    if (wrappers.has(e.keyword)) return false;
    if (e.keyword === 'additionalProperties' && deeper(e.instanceLocation)) return false;
    // An anyOf of {thing, null}: the "expected null" branch is noise when the thing failed.
    if (e.keyword === 'type' && /Expected "null"\.$/.test(e.error)) {
      const nullBranch = (o: OutputUnit) => o.keyword === 'type' && /Expected "null"\.$/.test(o.error);
      if (errors.some((o) => o !== e && o.instanceLocation.startsWith(e.instanceLocation) && !wrappers.has(o.keyword) && !nullBranch(o)))
        return false;
    }
    const id = `${e.instanceLocation} ${e.error}`;
    if (seen.has(id)) return false;
    seen.add(id);
    return true;
  });
}

function schemaMessage(e: OutputUnit, segments: string[]): string {
  if (e.keyword === 'false') return `unknown field \`${segments[segments.length - 1]}\``;
  return e.error.replace(/^Instance /, 'value ');
}

/** The schema problems of `state`'s text (none when it does not parse: the parse linter says so). */
export function schemaProblems(state: EditorState, validator: Validator | null): Problem[] {
  if (!validator) return [];
  let value: unknown;
  try {
    value = JSON.parse(state.doc.toString());
  } catch {
    return [];
  }
  const result = validator.validate(value);
  if (result.valid) return [];
  return usefulErrors(result.errors).map((e) => {
    const segments = pointerSegments(e.instanceLocation);
    const { node, found, key } = nodeAt(state, segments);
    // An unknown field is marked on its name; a wrong value on the value.
    const mark = e.keyword === 'false' && key && found ? key : node;
    const from = mark.from;
    const to = Math.min(mark.to, state.doc.lineAt(from).to);
    return {
      line: state.doc.lineAt(from).number,
      path: displayPath(segments),
      message: schemaMessage(e, segments),
      from,
      to: to > from ? to : Math.min(from + 1, state.doc.length),
      source: 'schema' as const,
    };
  });
}

export function syntaxProblems(view: EditorView): Problem[] {
  return jsonParseLinter()(view).map((d) => ({
    line: view.state.doc.lineAt(d.from).number,
    path: '',
    message: d.message,
    from: d.from,
    to: d.to,
    source: 'syntax' as const,
  }));
}

export function toDiagnostic(p: Problem): Diagnostic {
  return {
    from: p.from,
    to: p.to,
    severity: 'error',
    source: p.source,
    message: p.path ? `${p.path}: ${p.message}` : p.message,
  };
}

/** Diagnostics for the server's errors (they name a line, and maybe a column). */
export function serverProblems(
  state: EditorState,
  errors: { path: string; message: string; line?: number | null; column?: number | null; hint?: string | null }[],
): Problem[] {
  return errors.map((e) => {
    const lineNo = e.line && e.line >= 1 && e.line <= state.doc.lines ? e.line : 1;
    const line = state.doc.line(lineNo);
    const from = e.column && e.column >= 1 ? Math.min(line.from + e.column - 1, line.to) : line.from;
    return {
      line: lineNo,
      path: e.path,
      message: e.hint ? `${e.message} (hint: ${e.hint})` : e.message,
      from,
      to: Math.max(line.to, from),
      source: 'server' as const,
    };
  });
}

export function showServerProblems(view: EditorView, problems: Problem[]) {
  view.dispatch(setDiagnostics(view.state, problems.map(toDiagnostic)));
}

/** The editor's look; it lives in the editor's shadow root, where the page's CSS does not reach. */
const theme = EditorView.theme({
  '&': { height: '28rem', fontSize: '13px', backgroundColor: '#fff', color: '#111827' },
  '&.cm-focused': { outline: '3px solid #f59e0b' },
  '.cm-scroller': { fontFamily: 'ui-monospace, Menlo, monospace' },
  '.cm-gutters': { backgroundColor: '#f3f4f6', color: '#4b5563' },
});

/**
 * Mounts the editor in a shadow root of `host`. CodeMirror injects its styles at run time; in a
 * document it does so with a <style> element, which the UI's CSP (style-src 'self', no nonce)
 * blocks, while in a shadow root it uses a constructed stylesheet (adoptedStyleSheets), which
 * the CSP allows. The browser test checks that no CSP violation happens.
 */
export function createEditor(
  host: HTMLElement,
  doc: string,
  opts: { validator: () => Validator | null; onChange: (view: EditorView) => void; label: string },
): EditorView {
  const extensions: Extension[] = [
    lineNumbers(),
    foldGutter(),
    lintGutter(),
    history(),
    drawSelection(),
    indentOnInput(),
    bracketMatching(),
    highlightActiveLine(),
    highlightSelectionMatches(),
    syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    // Tab is left to move focus (keyboard users can leave the editor); indent with the auto-indent.
    keymap.of([...defaultKeymap, ...historyKeymap, ...searchKeymap]),
    json(),
    linter((view) => [...syntaxProblems(view), ...schemaProblems(view.state, opts.validator())].map(toDiagnostic), {
      delay: 300,
    }),
    EditorView.updateListener.of((u) => {
      if (u.docChanged) opts.onChange(u.view);
    }),
    // tabindex: the editor's scroller holds only this element, which axe must see as focusable.
    EditorView.contentAttributes.of({ 'aria-label': opts.label, 'data-testid': 'config-editor', tabindex: '0' }),
    EditorView.lineWrapping,
    theme,
  ];
  const root = host.shadowRoot ?? host.attachShadow({ mode: 'open' });
  root.replaceChildren();
  const parent = document.createElement('div');
  root.appendChild(parent);
  return new EditorView({ state: EditorState.create({ doc, extensions }), parent, root });
}
