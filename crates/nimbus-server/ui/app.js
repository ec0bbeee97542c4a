// Nimbus web console: one page, hash routes, the public /v1 API.
//
// Rules kept throughout (the server's CSP enforces the first two):
// - no inline script, no eval, no innerHTML: every name, label and message
//   from the API reaches the page through textContent or an attribute;
// - the token is never kept by the page: sign-in is a form POST and the
//   browser holds an HttpOnly session cookie; changes carry X-CSRF-Token;
// - buttons that change things are shown only to roles that may use them,
//   and the API refuses the call anyway.
'use strict';

(() => {
  const S = { user: null, admin: false, csrf: '', roles: {}, page: null };
  const RANK = { reader: 1, member: 2, admin: 3 };
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ DOM helpers

  // el('tag.class', {attr: v, onclick: f}, child, ...): children are nodes
  // or strings (made text nodes); never parsed as HTML.
  function el(spec, props, ...kids) {
    const [tag, ...classes] = spec.split('.');
    const n = document.createElement(tag);
    if (classes.length) n.className = classes.join(' ');
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
      else if (k === 'text') n.textContent = v;
      else if (k === 'value') n.value = v;
      else if (k === 'checked') n.checked = !!v;
      else n.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      n.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return n;
  }

  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); return n; }

  function toast(msg, bad) {
    const t = $('toast');
    t.textContent = msg;
    t.className = bad ? 'bad' : '';
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
  }

  function bytes(n) {
    if (n === undefined || n === null) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function when(t) { return t ? new Date(t).toLocaleString() : ''; }

  function labelChips(labels) {
    return Object.entries(labels || {}).map(([k, v]) => el('span.chip', { title: `${k}=${v}` }, `${k}=${v}`));
  }

  // ------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body, opts = {}) {
    const headers = {};
    if (method !== 'GET') headers['X-CSRF-Token'] = S.csrf;
    let payload;
    if (body instanceof Blob) { payload = body; headers['Content-Type'] = 'application/octet-stream'; }
    else if (body !== undefined) { payload = JSON.stringify(body); headers['Content-Type'] = 'application/json'; }
    const resp = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', signal: opts.signal });
    if (resp.status === 401 && !opts.quiet) { showSignIn(); }
    if (!resp.ok) {
      let code = '', message = `${method} ${path}: HTTP ${resp.status}`;
      try { const e = (await resp.json()).error; code = e.code; message = e.message; } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, code, message);
    }
    if (opts.raw) return resp;
    if (resp.status === 204) return null;
    const type = resp.headers.get('content-type') || '';
    return type.includes('json') ? resp.json() : resp.text();
  }

  // All pages of a list.
  async function listAll(path, signal) {
    let items = [], cont = null, revision = 0;
    do {
      const sep = path.includes('?') ? '&' : '?';
      const page = await api('GET', cont ? `${path}${sep}continue=${encodeURIComponent(cont)}` : path, undefined, { signal });
      items = items.concat(page.items);
      revision = page.revision;
      cont = page.continue;
    } while (cont);
    return { items, revision };
  }

  // Read an NDJSON or text stream, calling onLine per line, until it ends
  // or signal aborts.
  async function streamLines(path, signal, onLine) {
    const resp = await api('GET', path, undefined, { raw: true, signal });
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line) onLine(line);
      }
    }
    if (buf) onLine(buf);
  }

  // Follow a collection: onEvent(type, object) per change after revision;
  // reconnects when the server ends the stream, until signal aborts.
  async function watch(path, revision, signal, onEvent, onReset) {
    let rev = revision;
    while (!signal.aborted) {
      try {
        const sep = path.includes('?') ? '&' : '?';
        await streamLines(`${path}${sep}watch=true&revision=${rev}`, signal, (line) => {
          const ev = JSON.parse(line);
          if (ev.type === 'ERROR') { throw new Error('compacted'); }
          rev = Math.max(rev, ev.revision);
          onEvent(ev.type, ev.object);
        });
      } catch (e) {
        if (signal.aborted) return;
        if (e.message === 'compacted' && onReset) { rev = await onReset(); continue; }
      }
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  // ------------------------------------------------------------ roles

  function roleIn(project) { return S.admin ? 'admin' : (S.roles[project] || null); }
  function can(project, min) { return (RANK[roleIn(project)] || 0) >= RANK[min]; }

  // ------------------------------------------------------------ sign-in

  function showSignIn() {
    $('signin-page').hidden = false;
    $('main').hidden = true;
    $('signout').hidden = true;
    clear($('nav'));
    $('who').textContent = '';
    if (new URLSearchParams(location.search).get('signin') === 'failed') $('signin-error').hidden = false;
    $('token').focus();
  }

  async function loadSession() {
    const resp = await fetch('/ui/session', { credentials: 'same-origin' });
    if (!resp.ok) return false;
    const s = await resp.json();
    S.user = s.user; S.admin = s.system_admin; S.csrf = s.csrf;
    const who = await api('GET', '/v1/whoami');
    S.roles = who.roles || {};
    return true;
  }

  async function signOut() {
    try { await api('POST', '/ui/signout'); } catch (_) { /* already gone */ }
    S.csrf = '';
    location.replace('/ui/');
  }

  // ------------------------------------------------------------ layout

  function currentProject() {
    const m = location.hash.match(/^#\/p\/([^/]+)/);
    return m ? decodeURIComponent(m[1]) : (localStorage.getItem('nimbus.project') || Object.keys(S.roles)[0] || 'default');
  }

  function renderNav() {
    const p = currentProject();
    const enc = encodeURIComponent(p);
    const link = (href, text) => el('a', { href, 'aria-current': location.hash.startsWith(href) ? 'page' : null }, text);
    clear($('nav')).append(
      link('#/projects', 'Projects'),
      el('span.project', { title: 'current project' }, p),
      link(`#/p/${enc}/instances`, 'Instances'),
      link(`#/p/${enc}/images`, 'Images'),
      link(`#/p/${enc}/networks`, 'Networks'),
      link(`#/p/${enc}/secgroups`, 'Security groups'),
      link(`#/p/${enc}/ports`, 'Published ports'),
      link(`#/p/${enc}/volumes`, 'Volumes'),
      link(`#/p/${enc}/buckets`, 'Buckets'),
      link(`#/p/${enc}/s3credentials`, 'S3 keys'),
      link(`#/p/${enc}/usage`, 'Usage'),
      link('#/hosts', 'Hosts'),
      link('#/audit', 'Audit'),
    );
    $('who').textContent = `${S.user}${S.admin ? ' (system admin)' : roleIn(p) ? ` (${roleIn(p)} in ${p})` : ''}`;
  }

  function page(title, ...kids) {
    const main = clear($('main'));
    main.append(el('h1', {}, title), ...kids);
    return main;
  }

  function errorBox(e) { return el('p.error', { role: 'alert' }, e.message || String(e)); }

  // A button that asks once more before a destructive call.
  function confirmButton(text, action, attrs = {}) {
    const b = el('button.danger', { type: 'button', ...attrs }, text);
    let armed = false;
    b.addEventListener('click', async () => {
      if (!armed) { armed = true; b.textContent = `Confirm ${text.toLowerCase()}`; setTimeout(() => { armed = false; b.textContent = text; }, 4000); return; }
      b.disabled = true;
      try { await action(); } catch (e) { toast(e.message, true); b.disabled = false; }
    });
    return b;
  }

  function table(headers, rows, attrs = {}) {
    return el('table', attrs,
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
      el('tbody', {}, rows));
  }

  // A form from fields; onSubmit(values) may throw to show its error.
  function form(id, fields, submitText, onSubmit) {
    const err = el('p.error', { hidden: true, role: 'alert' });
    const f = el('form.card', { id }, fields, el('button', { type: 'submit' }, submitText), err);
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      const btn = f.querySelector('button[type=submit]');
      btn.disabled = true;
      try { await onSubmit(new FormData(f), f); } catch (e) { err.textContent = e.message; err.hidden = false; }
      btn.disabled = false;
    });
    return f;
  }

  function field(label, input) { return el('label.field', {}, el('span', {}, label), input); }

  function parseLabels(text) {
    const labels = {};
    for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
      const i = line.indexOf('=');
      if (i <= 0) throw new Error(`label ${JSON.stringify(line)} is not key=value`);
      labels[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    return labels;
  }

  // ------------------------------------------------------------ projects

  async function projectsPage() {
    const { items } = await listAll('/v1/projects', S.page.signal);
    const rows = items.map((p) => {
      const name = p.metadata.name;
      return el('tr', { 'data-project': name },
        el('td', {}, el('a', { href: `#/p/${encodeURIComponent(name)}/instances`, onclick: () => localStorage.setItem('nimbus.project', name) }, name)),
        el('td', {}, p.spec.description || ''),
        el('td', {}, labelChips(p.metadata.labels)),
        el('td', {}, roleIn(name) || ''),
        el('td', {}, when(p.metadata.created_at)));
    });
    const kids = [table(['Name', 'Description', 'Labels', 'Your role', 'Created'], rows, { id: 'projects' })];
    if (S.admin) {
      kids.push(el('h2', {}, 'New project'), form('project-form', [
        field('Name', el('input', { name: 'name', required: true })),
        field('Description', el('input', { name: 'description' })),
        field('Labels (key=value per line)', el('textarea', { name: 'labels', rows: 2 })),
      ], 'Create project', async (v) => {
        await api('POST', '/v1/projects', { name: v.get('name'), labels: parseLabels(v.get('labels')), spec: { description: v.get('description') } });
        toast(`project ${v.get('name')} created`);
        route();
      }));
    }
    page('Projects', ...kids);
  }

  // ------------------------------------------------------------ instances

  const ACTIONS = [['start', 'Start'], ['stop', 'Stop'], ['restart', 'Restart']];

  function instanceActions(project, name, onDone) {
    if (!can(project, 'member')) return [];
    const base = `/v1/projects/${encodeURIComponent(project)}/instances/${encodeURIComponent(name)}`;
    const buttons = ACTIONS.map(([action, text]) => el('button', {
      type: 'button', 'data-action': action,
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await api('POST', `${base}/${action}`); toast(`${name}: ${action} requested`); } catch (e) { toast(e.message, true); }
        ev.target.disabled = false;
      },
    }, text));
    buttons.push(confirmButton('Delete', async () => {
      await api('DELETE', base);
      toast(`${name}: deletion requested`);
      if (onDone) onDone();
    }, { 'data-action': 'delete' }));
    return buttons;
  }

  function cpus(spec) {
    if (spec.vm && spec.vm.vcpus) return String(spec.vm.vcpus);
    const m = spec.resources && spec.resources.cpu_millis;
    return m ? String(m / 1000) : '';
  }

  function instanceCells(project, inst) {
    const name = inst.metadata.name;
    const phase = (inst.status && inst.status.phase) || 'pending';
    return [
      el('td', {}, el('a', { href: `#/p/${encodeURIComponent(project)}/instances/${encodeURIComponent(name)}` }, name)),
      el('td', {}, inst.spec.kind || 'container'),
      el('td', {}, inst.spec.image),
      el('td.phase', { 'data-phase': phase }, el('span', { class: `phase phase-${phase}` }, phase)),
      el('td', {}, (inst.status && inst.status.host) || ''),
      el('td', {}, cpus(inst.spec)),
      el('td', {}, bytes(inst.spec.resources && inst.spec.resources.memory_bytes)),
      el('td', {}, labelChips(inst.metadata.labels)),
      el('td.actions', {}, instanceActions(project, name)),
    ];
  }

  async function instancesPage(project) {
    const signal = S.page.signal;
    const path = `/v1/projects/${encodeURIComponent(project)}/instances`;
    const tbody = el('tbody');
    const rows = new Map();
    const filter = el('input', { type: 'search', id: 'instance-filter', placeholder: 'Filter by name, image, phase or label' });
    const count = el('span.count');
    const upsert = (inst) => {
      const name = inst.metadata.name;
      const tr = rows.get(name) || el('tr', { 'data-instance': name });
      clear(tr).append(...instanceCells(project, inst));
      tr.dataset.search = `${name} ${inst.spec.image} ${(inst.status && inst.status.phase) || ''} ${Object.entries(inst.metadata.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ')}`.toLowerCase();
      if (!rows.has(name)) { rows.set(name, tr); tbody.append(tr); }
      applyFilter(tr);
    };
    const remove = (name) => { const tr = rows.get(name); if (tr) { tr.remove(); rows.delete(name); } };
    const applyFilter = (tr) => { const q = filter.value.trim().toLowerCase(); tr.hidden = q !== '' && !tr.dataset.search.includes(q); };
    const recount = () => { count.textContent = `${rows.size} instance${rows.size === 1 ? '' : 's'}`; };
    filter.addEventListener('input', () => { for (const tr of rows.values()) applyFilter(tr); });

    const load = async () => {
      const { items, revision } = await listAll(path, signal);
      const frag = document.createDocumentFragment();
      rows.clear();
      clear(tbody);
      for (const inst of items) {
        const tr = el('tr', { 'data-instance': inst.metadata.name }, instanceCells(project, inst));
        tr.dataset.search = `${inst.metadata.name} ${inst.spec.image} ${(inst.status && inst.status.phase) || ''}`.toLowerCase();
        rows.set(inst.metadata.name, tr);
        frag.append(tr);
      }
      tbody.append(frag);
      recount();
      return revision;
    };
    const revision = await load();
    const head = [el('div.toolbar', {}, filter, count,
      can(project, 'member') ? el('a.button', { href: `#/p/${encodeURIComponent(project)}/instances/new`, id: 'launch' }, 'Launch instance') : null)];
    page(`Instances in ${project}`, ...head,
      el('table', { id: 'instances' },
        el('thead', {}, el('tr', {}, ['Name', 'Kind', 'Image', 'Phase', 'Host', 'CPUs', 'Memory', 'Labels', ''].map((h) => el('th', {}, h)))),
        tbody));
    markReady('instances');
    watch(path, revision, signal, (type, obj) => {
      if (!obj) return;
      if (type === 'DELETED') remove(obj.metadata.name); else upsert(obj);
      recount();
    }, load);
  }

  function markReady(which) {
    document.body.dataset.ready = which;
    window.nimbusReadyAt = performance.now();
  }

  async function newInstancePage(project) {
    const signal = S.page.signal;
    const enc = encodeURIComponent(project);
    const [images, networks, groups] = await Promise.all([
      listAll(`/v1/projects/${enc}/images`, signal),
      listAll(`/v1/projects/${enc}/networks`, signal),
      listAll(`/v1/projects/${enc}/secgroups`, signal),
    ]);
    const checks = (name, items) => items.length
      ? el('div.checks', {}, items.map((it) => el('label', {}, el('input', { type: 'checkbox', name, value: it.metadata.name }), it.metadata.name)))
      : el('span.muted', {}, 'none in this project');
    page(`Launch an instance in ${project}`, form('instance-form', [
      field('Name', el('input', { name: 'name', required: true, pattern: '[a-z0-9]([-a-z0-9]*[a-z0-9])?' })),
      field('Image', el('select', { name: 'image', required: true }, images.items.map((i) => el('option', { value: i.metadata.name }, i.metadata.name)))),
      field('Kind', el('select', { name: 'kind' }, ['container', 'vm', 'unikernel'].map((k) => el('option', { value: k }, k)))),
      field('CPUs', el('input', { name: 'cpus', type: 'number', min: '0.1', step: '0.1', placeholder: 'project default' })),
      field('Memory (MiB)', el('input', { name: 'memory', type: 'number', min: '1', placeholder: 'project default' })),
      field('Command (JSON array, or words)', el('input', { name: 'args', placeholder: '["sh","-c","echo hi; sleep 600"]' })),
      field('Labels (key=value per line)', el('textarea', { name: 'labels', rows: 2 })),
      field('Networks', checks('networks', networks.items)),
      field('Security groups', checks('secgroups', groups.items)),
    ], 'Launch', async (v) => {
      const kind = v.get('kind');
      const spec = { kind, image: v.get('image'), resources: {} };
      const argText = (v.get('args') || '').trim();
      if (argText) spec.args = argText.startsWith('[') ? JSON.parse(argText) : argText.split(/\s+/);
      const c = parseFloat(v.get('cpus'));
      if (c > 0) { if (kind === 'container') spec.resources.cpu_millis = Math.round(c * 1000); else spec.vm = { vcpus: Math.max(1, Math.round(c)) }; }
      const m = parseInt(v.get('memory'), 10);
      if (m > 0) spec.resources.memory_bytes = m * 1024 * 1024;
      const nets = v.getAll('networks'); if (nets.length) spec.networks = nets;
      const sgs = v.getAll('secgroups'); if (sgs.length) spec.secgroups = sgs;
      await api('POST', `/v1/projects/${enc}/instances`, { name: v.get('name'), labels: parseLabels(v.get('labels') || ''), spec });
      toast(`instance ${v.get('name')} created`);
      location.hash = `#/p/${enc}/instances`;
    }));
  }

  async function instancePage(project, name) {
    const signal = S.page.signal;
    const base = `/v1/projects/${encodeURIComponent(project)}/instances/${encodeURIComponent(name)}`;
    const inst = await api('GET', base, undefined, { signal });
    const summary = el('dl.summary');
    const show = (i) => {
      const st = i.status || {};
      clear(summary).append(...[
        ['Kind', i.spec.kind], ['Image', i.spec.image],
        ['Phase', el('span', { class: `phase phase-${st.phase}`, id: 'detail-phase' }, st.phase || 'pending')],
        ['Host', st.host || ''], ['Started', when(st.started_at)], ['Exit code', st.exit_code ?? ''],
        ['Restarts', String(st.restart_count || 0)], ['Reason', st.reason || ''],
        ['CPUs', cpus(i.spec)], ['Memory', bytes(i.spec.resources && i.spec.resources.memory_bytes)],
        ['Networks', (i.spec.networks || []).join(', ')], ['Security groups', (i.spec.secgroups || []).join(', ')],
        ['Labels', el('span', {}, labelChips(i.metadata.labels))],
      ].flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    };
    show(inst);
    const logs = el('pre.logs', { id: 'logs', tabindex: '0' });
    const loadLogs = async () => {
      try { logs.textContent = await api('GET', `${base}/logs?tail=500`, undefined, { signal }) || '(no output yet)'; } catch (e) { logs.textContent = e.message; }
    };
    const kids = [
      el('div.toolbar', {}, instanceActions(project, name, () => { location.hash = `#/p/${encodeURIComponent(project)}/instances`; })),
      summary,
      el('h2', {}, 'Logs'),
      el('div.toolbar', {}, el('button', { type: 'button', id: 'refresh-logs', onclick: loadLogs }, 'Refresh logs')),
      logs,
    ];
    if (can(project, 'member')) {
      const isVm = inst.spec.kind !== 'container';
      const term = el('div.terminal', { id: 'terminal' });
      kids.push(el('h2', {}, isVm ? 'Serial console' : 'Terminal'),
        el('div.toolbar', {}, el('button', { type: 'button', id: 'open-terminal', onclick: () => openTerminal(term, project, name, isVm) }, isVm ? 'Attach console' : 'Open shell')),
        term);
    }
    page(`Instance ${name}`, ...kids);
    loadLogs();
    watch(`/v1/projects/${encodeURIComponent(project)}/instances`, inst.metadata.revision, signal, (type, obj) => {
      if (!obj || obj.metadata.name !== name) return;
      if (type === 'DELETED') { $('detail-phase').textContent = 'deleted'; return; }
      show(obj);
    });
  }

  // ------------------------------------------------------------ terminal

  // A small terminal: output in a <pre>, keys sent as typed. It renders
  // text, CR/LF and backspace and drops other escape sequences (colours,
  // cursor moves), which is enough for a shell or a serial console; it is
  // not a full VT100 (no full-screen programs).
  function openTerminal(box, project, name, isConsole) {
    clear(box);
    const out = el('pre.screen', { tabindex: '0', id: 'terminal-screen' });
    box.append(out);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/ui/terminal/${encodeURIComponent(project)}/${encodeURIComponent(name)}${isConsole ? "?mode=console" : ""}`);
    ws.binaryType = 'arraybuffer';
    const enc = new TextEncoder();
    const dec = new TextDecoder();
    let buf = new Uint8Array(0);
    const frame = (kind, payload) => {
      const f = new Uint8Array(5 + payload.length);
      f[0] = kind;
      new DataView(f.buffer).setUint32(1, payload.length);
      f.set(payload, 5);
      return f;
    };
    const write = (text) => {
      // eslint-disable-next-line no-control-regex
      text = text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]/g, '');
      let t = out.textContent;
      for (const ch of text) {
        if (ch === '\r') continue;
        if (ch === '\b' || ch === '\x7f') t = t.slice(0, -1);
        else t += ch;
      }
      out.textContent = t.length > 200000 ? t.slice(-100000) : t;
      out.scrollTop = out.scrollHeight;
    };
    ws.addEventListener('open', () => {
      const rows = 30, cols = 100;
      ws.send(JSON.stringify({ csrf: S.csrf, console: isConsole, request: { args: ['/bin/sh'], tty: true, rows, cols } }));
      out.focus();
    });
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data === 'string') { write(`\n[${ev.data}]\n`); return; }
      const more = new Uint8Array(ev.data);
      const joined = new Uint8Array(buf.length + more.length);
      joined.set(buf); joined.set(more, buf.length);
      buf = joined;
      while (buf.length >= 5) {
        const len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
        if (buf.length < 5 + len) break;
        const kind = buf[0];
        const payload = buf.slice(5, 5 + len);
        buf = buf.slice(5 + len);
        if (kind === 1 || kind === 2) write(dec.decode(payload, { stream: true }));
        else if (kind === 3) write(`\n[exited with ${new DataView(payload.buffer).getInt32(0)}]\n`);
      }
    });
    ws.addEventListener('close', () => write('\n[session closed]\n'));
    out.addEventListener('keydown', (ev) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      let s = null;
      if (ev.key.length === 1 && !ev.ctrlKey && !ev.metaKey) s = ev.key;
      else if (ev.ctrlKey && ev.key.length === 1) s = String.fromCharCode(ev.key.toUpperCase().charCodeAt(0) - 64);
      else s = { Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b', ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D' }[ev.key] || null;
      if (s === null) return;
      ev.preventDefault();
      ws.send(frame(0, enc.encode(s)));
    });
    out.addEventListener('paste', (ev) => {
      ev.preventDefault();
      if (ws.readyState === WebSocket.OPEN) ws.send(frame(0, enc.encode(ev.clipboardData.getData('text'))));
    });
    S.page.signal.addEventListener('abort', () => ws.close());
  }

  // ------------------------------------------------------------ images

  async function imagesPage(project) {
    const enc = encodeURIComponent(project);
    const { items } = await listAll(`/v1/projects/${enc}/images`, S.page.signal);
    const member = can(project, 'member');
    const rows = items.map((i) => el('tr', { 'data-image': i.metadata.name },
      el('td', {}, i.metadata.name),
      el('td', {}, (i.status && i.status.format) || ''),
      el('td', {}, bytes(i.status && i.status.size_bytes)),
      el('td', {}, (i.status && i.status.architecture) || ''),
      el('td', {}, (i.spec && i.spec.source) || ''),
      el('td', {}, when(i.metadata.created_at)),
      el('td', {}, member ? confirmButton('Delete', async () => { await api('DELETE', `/v1/projects/${enc}/images/${encodeURIComponent(i.metadata.name)}`); route(); }) : null)));
    const kids = [table(['Name', 'Format', 'Size', 'Architecture', 'Source', 'Created', ''], rows, { id: 'images' })];
    if (member) {
      kids.push(el('h2', {}, 'Import an image'), form('image-form', [
        field('Name', el('input', { name: 'name', required: true })),
        field('Kind', el('select', { name: 'kind' }, [['archive', 'rootfs tarball or OCI archive'], ['disk', 'VM disk (qcow2 or raw)'], ['kernel', 'kernel (ELF)']].map(([v, t]) => el('option', { value: v }, t)))),
        field('File', el('input', { name: 'file', type: 'file', required: true })),
      ], 'Import', async (v) => {
        const file = v.get('file');
        const q = new URLSearchParams({ name: v.get('name'), kind: v.get('kind'), source: file.name });
        toast(`importing ${file.name} (${bytes(file.size)})…`);
        await api('POST', `/v1/projects/${enc}/images?${q}`, file);
        toast(`image ${v.get('name')} imported`);
        route();
      }));
    }
    page(`Images in ${project}`, ...kids);
  }

  // ------------------------------------------------------------ networks, groups, ports

  async function networksPage(project) {
    const enc = encodeURIComponent(project);
    const { items } = await listAll(`/v1/projects/${enc}/networks`, S.page.signal);
    const member = can(project, 'member');
    const rows = items.map((n) => el('tr', { 'data-network': n.metadata.name },
      el('td', {}, n.metadata.name), el('td', {}, n.spec.subnet), el('td', {}, n.spec.gateway || ''),
      el('td', {}, labelChips(n.metadata.labels)),
      el('td', {}, member ? confirmButton('Delete', async () => { await api('DELETE', `/v1/projects/${enc}/networks/${encodeURIComponent(n.metadata.name)}`); route(); }) : null)));
    const kids = [table(['Name', 'Subnet', 'Gateway', 'Labels', ''], rows, { id: 'networks' })];
    if (member) {
      kids.push(el('h2', {}, 'New network'), form('network-form', [
        field('Name', el('input', { name: 'name', required: true })),
        field('Subnet (CIDR)', el('input', { name: 'subnet', required: true, placeholder: '10.10.0.0/24' })),
      ], 'Create network', async (v) => {
        await api('POST', `/v1/projects/${enc}/networks`, { name: v.get('name'), spec: { subnet: v.get('subnet') } });
        route();
      }));
    }
    page(`Networks in ${project}`, ...kids);
  }

  function ruleText(r) {
    const ports = r.port_from ? (r.port_to && r.port_to !== r.port_from ? `${r.port_from}-${r.port_to}` : String(r.port_from)) : 'all ports';
    return `${r.protocol || 'any'} ${ports} from ${r.cidr || (r.group ? `group ${r.group}` : 'anywhere')}`;
  }

  async function secgroupsPage(project) {
    const enc = encodeURIComponent(project);
    const { items } = await listAll(`/v1/projects/${enc}/secgroups`, S.page.signal);
    const member = can(project, 'member');
    const rows = items.map((g) => el('tr', { 'data-secgroup': g.metadata.name },
      el('td', {}, g.metadata.name), el('td', {}, g.spec.description || ''),
      el('td', {}, (g.spec.rules || []).map((r) => el('div', {}, ruleText(r)))),
      el('td', {}, member ? confirmButton('Delete', async () => { await api('DELETE', `/v1/projects/${enc}/secgroups/${encodeURIComponent(g.metadata.name)}`); route(); }) : null)));
    const kids = [table(['Name', 'Description', 'Inbound rules', ''], rows, { id: 'secgroups' })];
    if (member) {
      kids.push(el('h2', {}, 'New security group'), form('secgroup-form', [
        field('Name', el('input', { name: 'name', required: true })),
        field('Description', el('input', { name: 'description' })),
        field('Rules, one per line: protocol port[-port] cidr', el('textarea', { name: 'rules', rows: 3, placeholder: 'tcp 22 10.0.0.0/8' })),
      ], 'Create security group', async (v) => {
        const rules = (v.get('rules') || '').split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
          const [protocol, ports, cidr] = l.split(/\s+/);
          const [from, to] = (ports || '').split('-').map((p) => parseInt(p, 10));
          const r = { protocol };
          if (from) { r.port_from = from; r.port_to = to || from; }
          if (cidr) r.cidr = cidr;
          return r;
        });
        await api('POST', `/v1/projects/${enc}/secgroups`, { name: v.get('name'), spec: { description: v.get('description'), rules } });
        route();
      }));
    }
    page(`Security groups in ${project}`, ...kids);
  }

  async function portsPage(project) {
    const enc = encodeURIComponent(project);
    const { items } = await listAll(`/v1/projects/${enc}/addresses`, S.page.signal);
    const member = can(project, 'member');
    const rows = items.map((a) => el('tr', { 'data-port': a.metadata.name },
      el('td', {}, a.metadata.name), el('td', {}, a.spec.instance), el('td', {}, a.spec.protocol || 'tcp'),
      el('td', {}, String(a.spec.host_port)), el('td', {}, String(a.spec.instance_port)),
      el('td', {}, (a.status && (a.status.phase || a.status.state)) || ''),
      el('td', {}, member ? confirmButton('Delete', async () => { await api('DELETE', `/v1/projects/${enc}/addresses/${encodeURIComponent(a.metadata.name)}`); route(); }) : null)));
    const kids = [table(['Name', 'Instance', 'Protocol', 'Host port', 'Instance port', 'Status', ''], rows, { id: 'ports' })];
    if (member) {
      kids.push(el('h2', {}, 'Publish a port'), form('port-form', [
        field('Name', el('input', { name: 'name', required: true })),
        field('Instance', el('input', { name: 'instance', required: true })),
        field('Protocol', el('select', { name: 'protocol' }, ['tcp', 'udp'].map((p) => el('option', { value: p }, p)))),
        field('Host port', el('input', { name: 'host_port', type: 'number', min: 1, max: 65535, required: true })),
        field('Instance port', el('input', { name: 'instance_port', type: 'number', min: 1, max: 65535, required: true })),
      ], 'Publish', async (v) => {
        await api('POST', `/v1/projects/${enc}/addresses`, { name: v.get('name'), spec: { instance: v.get('instance'), protocol: v.get('protocol'), host_port: +v.get('host_port'), instance_port: +v.get('instance_port') } });
        route();
      }));
    }
    page(`Published ports in ${project}`, ...kids);
  }

  // ------------------------------------------------------------ object storage

  // ------------------------------------------------------------ volumes

  async function volumesPage(project) {
    const enc = encodeURIComponent(project);
    const [{ items: volumes }, { items: instances }] = await Promise.all([
      listAll(`/v1/projects/${enc}/volumes`, S.page.signal),
      listAll(`/v1/projects/${enc}/instances`, S.page.signal)]);
    const member = can(project, 'member');
    const users = {};
    for (const i of instances) {
      for (const m of (i.spec.volumes || [])) (users[m.volume] = users[m.volume] || []).push(`${i.metadata.name}:${m.path}${m.read_only ? ' (ro)' : ''}`);
    }
    const base = (name) => `/v1/projects/${enc}/volumes/${encodeURIComponent(name)}`;
    const mib = (v, key) => { const n = parseInt(v.get(key), 10); return Number.isFinite(n) && n > 0 ? n * 1048576 : 0; };
    const rows = volumes.map((v) => {
      const st = v.status || {}, name = v.metadata.name;
      // Asked to be deleted: its host removes the data, then it goes.
      const phase = v.metadata.deletion_requested_at ? 'deleting' : (st.phase || 'pending');
      const snaps = (v.spec.snapshots || []).map((s) => el('span.chip', { 'data-snapshot': s.name, title: `${bytes(s.size_bytes)}, ${when(s.created_at)}` }, s.name,
        member ? confirmButton('×', async () => {
          await api('DELETE', `${base(name)}/snapshots/${encodeURIComponent(s.name)}`);
          toast(`snapshot ${name}@${s.name} deleted`);
          route();
        }, { 'data-action': 'delete-snapshot', title: `delete snapshot ${s.name}` }) : null));
      return el('tr', { 'data-volume': name },
        el('td', {}, name), el('td', {}, bytes(v.spec.size_bytes)), el('td', {}, bytes(st.allocated_bytes)),
        el('td', {}, el('span', { class: `phase phase-${phase}`, title: st.message || '' }, phase)),
        el('td', {}, v.spec.host || ''), el('td', {}, snaps), el('td', {}, (users[name] || []).join(', ')),
        el('td', {}, member ? confirmButton('Delete', async () => {
          await api('DELETE', base(name));
          toast(`volume ${name} deleted`);
          route();
        }, { 'data-action': 'delete' }) : null));
    });
    const kids = [table(['Name', 'Size', 'Used', 'Phase', 'Host', 'Snapshots', 'Attached to', ''], rows, { id: 'volumes' }),
      el('p.hint', {}, 'A volume keeps its data on its host; attach it with `nimbus instance run --volume NAME:/path`. A volume attached to an instance cannot be deleted.')];
    if (member) {
      const sources = volumes.flatMap((v) => (v.spec.snapshots || []).map((s) => `${v.metadata.name}@${s.name}`));
      const names = volumes.map((v) => el('option', { value: v.metadata.name }, v.metadata.name));
      kids.push(el('h2', {}, 'New volume'), form('volume-form', [
        field('Name', el('input', { name: 'name', required: true, spellcheck: 'false' })),
        field('Size (MiB; from a snapshot: at least its size, empty for the same)', el('input', { name: 'size', type: 'number', min: '1' })),
        field('From snapshot', el('select', { name: 'from_snapshot' }, el('option', { value: '' }, 'empty volume'), sources.map((s) => el('option', { value: s }, s)))),
      ], 'Create volume', async (v) => {
        const spec = { size_bytes: mib(v, 'size') };
        if (v.get('from_snapshot')) spec.from_snapshot = v.get('from_snapshot');
        await api('POST', `/v1/projects/${enc}/volumes`, { name: v.get('name'), spec });
        toast(`volume ${v.get('name')} created`);
        route();
      }));
      if (volumes.length) {
        kids.push(el('h2', {}, 'Grow or snapshot'),
          form('volume-resize-form', [
            field('Volume', el('select', { name: 'volume' }, names)),
            field('New size (MiB; volumes only grow)', el('input', { name: 'size', type: 'number', min: '1', required: true })),
          ], 'Resize', async (v) => {
            await api('POST', `${base(v.get('volume'))}/resize`, { size_bytes: mib(v, 'size') });
            toast(`volume ${v.get('volume')} resized`);
            route();
          }),
          form('volume-snapshot-form', [
            field('Volume', el('select', { name: 'volume' }, volumes.map((x) => el('option', { value: x.metadata.name }, x.metadata.name)))),
            field('Snapshot name', el('input', { name: 'name', required: true, spellcheck: 'false' })),
          ], 'Take snapshot', async (v) => {
            await api('POST', `${base(v.get('volume'))}/snapshots`, { name: v.get('name') });
            toast(`snapshot ${v.get('volume')}@${v.get('name')} taken`);
            route();
          }));
      }
    }
    page(`Volumes of ${project}`, ...kids);
  }

  async function bucketsPage(project) {
    const enc = encodeURIComponent(project);
    const buckets = await api('GET', `/v1/projects/${enc}/buckets`, undefined, { signal: S.page.signal });
    const member = can(project, 'member');
    const rows = buckets.map((b) => el('tr', { 'data-bucket': b.name },
      el('td', {}, b.name),
      el('td', {}, b.public_read ? 'public read' : 'private'),
      el('td', {}, when(b.created)),
      el('td', {}, member ? confirmButton('Delete', async () => {
        await api('DELETE', `/v1/projects/${enc}/buckets/${encodeURIComponent(b.name)}`);
        toast(`bucket ${b.name} deleted`);
        route();
      }, { 'data-action': 'delete' }) : null)));
    const kids = [table(['Name', 'Access', 'Created', ''], rows, { id: 'buckets' }),
      el('p.hint', {}, 'Objects are reached through the S3 endpoint with an access key of this project (S3 keys). A bucket that still holds objects cannot be deleted.')];
    if (member) {
      kids.push(el('h2', {}, 'New bucket'), form('bucket-form', [
        field('Name (3-63 lowercase letters, digits, - and .; unique on this cloud)', el('input', { name: 'name', required: true, spellcheck: 'false' })),
        el('label.field', {}, el('span', {}, 'Access'),
          el('span', {}, el('input', { name: 'public_read', type: 'checkbox', value: 'true' }), ' public read: anyone may GET its objects without a key')),
      ], 'Create bucket', async (v) => {
        await api('POST', `/v1/projects/${enc}/buckets`, { name: v.get('name'), public_read: v.get('public_read') === 'true' });
        toast(`bucket ${v.get('name')} created`);
        route();
      }));
    }
    page(`Buckets of ${project}`, ...kids);
  }

  async function credentialsPage(project) {
    const enc = encodeURIComponent(project);
    if (!can(project, 'member')) {
      // The API shows access keys to members and admins only.
      page(`S3 access keys of ${project}`, el('p.muted', { id: 's3credentials-denied' },
        `S3 access keys are shown to members and admins of ${project}; you are ${roleIn(project) || 'not a member'}.`));
      return;
    }
    const keys = await api('GET', `/v1/projects/${enc}/s3credentials`, undefined, { signal: S.page.signal });
    const secretBox = el('div', { id: 'new-secret', hidden: true });
    const rows = keys.map((k) => el('tr', { 'data-access-key': k.access_key_id },
      el('td.path', {}, k.access_key_id), el('td', {}, k.user), el('td', {}, when(k.created)),
      el('td', {}, confirmButton('Delete', async () => {
        await api('DELETE', `/v1/projects/${enc}/s3credentials/${encodeURIComponent(k.access_key_id)}`);
        toast(`access key ${k.access_key_id} deleted`);
        route();
      }, { 'data-action': 'delete' }))));
    const create = el('button', { type: 'button', id: 'create-s3credential' }, 'Create access key');
    create.addEventListener('click', async () => {
      create.disabled = true;
      try {
        const k = await api('POST', `/v1/projects/${enc}/s3credentials`);
        // The secret is in this response only; it is not kept by the page.
        clear(secretBox).append(el('p', {}, 'Copy the secret now: it is shown this once and cannot be read again.'),
          el('dl.summary', {},
            el('dt', {}, 'Access key id'), el('dd.path', { id: 'new-access-key-id' }, k.access_key_id),
            el('dt', {}, 'Secret access key'), el('dd.path', { id: 'new-secret-access-key' }, k.secret_access_key)));
        secretBox.hidden = false;
        const tbody = document.querySelector('#s3credentials tbody');
        tbody.append(el('tr', { 'data-access-key': k.access_key_id },
          el('td.path', {}, k.access_key_id), el('td', {}, k.user), el('td', {}, 'now'), el('td')));
      } catch (e) { toast(e.message, true); }
      create.disabled = false;
    });
    page(`S3 access keys of ${project}`, table(['Access key id', 'User', 'Created', ''], rows, { id: 's3credentials' }),
      el('div.toolbar', {}, create), secretBox);
  }

  // ------------------------------------------------------------ hosts, audit

  async function hostsPage() {
    const { items } = await listAll('/v1/hosts', S.page.signal);
    const rows = items.map((h) => { const st = h.status || {}; return el('tr', { 'data-host': h.metadata.name },
      el('td', {}, h.metadata.name), el('td', {}, el('span', { class: `phase phase-${st.phase}` }, st.phase || '')),
      el('td', {}, String(st.cpus ?? '')), el('td', {}, bytes(st.memory_bytes)), el('td', {}, bytes(st.disk_bytes)),
      el('td', {}, st.architecture || ''), el('td', {}, st.kernel || ''), el('td', {}, st.cgroup || ''),
      el('td', {}, when(st.last_heartbeat))); });
    page('Hosts', table(['Name', 'Phase', 'CPUs', 'Memory', 'Disk', 'Architecture', 'Kernel', 'Cgroup', 'Last heartbeat'], rows, { id: 'hosts' }));
  }

  async function auditPage() {
    const tbody = el('tbody');
    const more = el('button', { type: 'button', hidden: true }, 'Older records');
    let cont = null, query = '';
    const load = async (append) => {
      const q = new URLSearchParams(query);
      q.set('limit', '100');
      if (append && cont) q.set('continue', cont);
      const page = await api('GET', `/v1/audit?${q}`, undefined, { signal: S.page.signal });
      if (!append) clear(tbody);
      for (const r of page.items) {
        tbody.append(el('tr', {}, el('td', {}, when(r.time)), el('td', {}, r.actor), el('td', {}, r.method),
          el('td.path', {}, r.path), el('td', {}, r.project || ''), el('td', {}, String(r.status)), el('td', {}, r.result || '')));
      }
      cont = page.continue;
      more.hidden = !cont;
    };
    more.addEventListener('click', () => load(true).catch((e) => toast(e.message, true)));
    const filters = form('audit-filter', [
      field('Actor', el('input', { name: 'actor' })), field('Project', el('input', { name: 'project' })),
      field('Method', el('input', { name: 'method', placeholder: 'POST' })), field('Path prefix', el('input', { name: 'path_prefix' })),
      field('Status', el('input', { name: 'status', placeholder: '4xx' })), field('Since', el('input', { name: 'since', placeholder: '1h or RFC 3339' })),
    ], 'Filter', async (v) => {
      const q = new URLSearchParams();
      for (const [k, val] of v.entries()) if (val) q.set(k, val);
      query = q.toString();
      await load(false);
    });
    page('Audit log', filters, el('table', { id: 'audit' },
      el('thead', {}, el('tr', {}, ['Time', 'Actor', 'Method', 'Path', 'Project', 'Status', 'Result'].map((h) => el('th', {}, h)))), tbody), more);
    await load(false);
  }

  // ------------------------------------------------------------ usage

  function isoDay(d) { return d.toISOString().slice(0, 10); }

  // The window is given as `nimbus usage --from/--to` takes it: a date
  // (midnight UTC) or an RFC 3339 time; the server parses and checks it.
  async function usagePage(project) {
    const enc = encodeURIComponent(project);
    const out = el('div', { id: 'usage' });
    const now = new Date();
    const show = async (from, to) => {
      clear(out);
      delete out.dataset.from;
      try {
        const q = new URLSearchParams({ from, to });
        const u = await api('GET', `/v1/projects/${enc}/usage?${q}`, undefined, { signal: S.page.signal });
        const hours = u.hours || [];
        out.append(
          usageChart(hours, 'instance-hours per hour', 'usage-instances', 'h',
            [['container', (h) => (h.instance_hours || {}).container], ['vm', (h) => (h.instance_hours || {}).vm], ['unikernel', (h) => (h.instance_hours || {}).unikernel]]),
          usageChart(hours, 'storage GiB-hours per hour', 'usage-storage', 'GiB-h',
            [['image', (h) => h.image_gib_hours], ['object', (h) => h.object_gib_hours], ['volume', (h) => h.volume_gib_hours]]),
          usageTotals(u.totals || {}));
        // Set last: a reader of the page (or a test) waits for it.
        out.dataset.from = u.from;
        out.dataset.to = u.to;
      } catch (e) {
        out.append(el('p.muted', { id: 'usage-unavailable' }, e.status === 404 ? 'Usage is not available on this server.' : e.message));
      }
    };
    const hint = 'YYYY-MM-DD (UTC) or RFC 3339';
    const from0 = isoDay(new Date(now - 86400000)), to0 = isoDay(new Date(now.getTime() + 86400000));
    const f = form('usage-form', [
      field('From', el('input', { name: 'from', value: from0, placeholder: hint, required: true, spellcheck: 'false' })),
      field('To', el('input', { name: 'to', value: to0, placeholder: hint, required: true, spellcheck: 'false' })),
    ], 'Show', (v) => show(v.get('from').trim(), v.get('to').trim()));
    page(`Usage of ${project}`, f, out);
    await show(from0, to0);
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...kids) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    for (const k of kids) n.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return n;
  }

  // Stacked bars per hour, one colour per series. Every hour of the
  // window gets a group, empty or not, carrying the API's figures as
  // data attributes (data-<series>), so what is drawn can be checked
  // against `nimbus usage -o json`.
  function usageChart(hours, title, id, unit, series) {
    const W = 900, H = 240, pad = 40;
    const value = (h, get) => { const v = get(h); return typeof v === 'number' && v > 0 ? v : 0; };
    const max = Math.max(1e-9, ...hours.map((h) => series.reduce((s, [, get]) => s + value(h, get), 0)));
    const bw = hours.length ? (W - pad * 2) / hours.length : 0;
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', id, role: 'img', 'aria-label': title },
      svg('line', { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, class: 'axis' }),
      svg('text', { x: pad, y: pad - 12, class: 'legend' }, `${title} (max ${figure(max > 1e-9 ? max : 0)} ${unit})`));
    hours.forEach((h, i) => {
      const g = svg('g', { class: 'hour', 'data-hour': h.hour });
      let y = H - pad;
      for (const [name, get] of series) {
        const raw = get(h);
        g.setAttribute(`data-${name}`, String(raw === undefined ? 0 : raw));
        const v = value(h, get);
        const bh = (v / max) * (H - pad * 2);
        if (bh > 0) {
          y -= bh;
          g.append(svg('rect', { x: pad + i * bw + 1, y, width: Math.max(1, bw - 2), height: bh, class: `bar bar-${name}` },
            svg('title', {}, `${h.hour} ${name}: ${figure(v)} ${unit}`)));
        }
      }
      chart.append(g);
    });
    // Hour labels: about eight along the axis, whatever the window.
    const every = Math.max(1, Math.ceil(hours.length / 8));
    hours.forEach((h, i) => {
      if (i % every === 0) chart.append(svg('text', { x: pad + i * bw, y: H - pad + 16, class: 'legend' }, String(h.hour).slice(5, 16).replace('T', ' ')));
    });
    series.forEach(([name], i) => chart.append(svg('rect', { x: W - pad - 300 + i * 100, y: 8, width: 10, height: 10, class: `bar bar-${name}` }),
      svg('text', { x: W - pad - 285 + i * 100, y: 17, class: 'legend' }, name)));
    return chart;
  }

  // Four decimals, or four significant digits for what is smaller (a
  // few MiB of objects for minutes is far below 0.0001 GiB-hours).
  function figure(v) {
    if (typeof v !== 'number') return '';
    if (v === 0) return '0';
    return Math.abs(v) >= 0.001 ? v.toFixed(4) : v.toPrecision(4);
  }

  // Each cell shows a rounded figure and keeps the API's in data-value.
  function usageTotals(t) {
    const ih = t.instance_hours || {};
    return table(['Container hours', 'VM hours', 'Unikernel hours', 'vCPU hours', 'Memory GiB-hours', 'Image GiB-hours', 'Object GiB-hours', 'Volume GiB-hours'],
      [el('tr', {}, [ih.container, ih.vm, ih.unikernel, t.vcpu_hours, t.memory_gib_hours, t.image_gib_hours, t.object_gib_hours, t.volume_gib_hours]
        .map((v) => el('td', { 'data-value': v === undefined ? '' : String(v) }, figure(v))))],
      { id: 'usage-totals' });
  }

  // ------------------------------------------------------------ routing

  const ROUTES = [
    ['projects', /^#\/projects$/, () => projectsPage()],
    ['instances', /^#\/p\/([^/]+)\/instances$/, (p) => instancesPage(p)],
    ['new-instance', /^#\/p\/([^/]+)\/instances\/new$/, (p) => newInstancePage(p)],
    ['instance', /^#\/p\/([^/]+)\/instances\/([^/]+)$/, (p, n) => instancePage(p, n)],
    ['images', /^#\/p\/([^/]+)\/images$/, (p) => imagesPage(p)],
    ['networks', /^#\/p\/([^/]+)\/networks$/, (p) => networksPage(p)],
    ['secgroups', /^#\/p\/([^/]+)\/secgroups$/, (p) => secgroupsPage(p)],
    ['ports', /^#\/p\/([^/]+)\/ports$/, (p) => portsPage(p)],
    ['volumes', /^#\/p\/([^/]+)\/volumes$/, (p) => volumesPage(p)],
    ['buckets', /^#\/p\/([^/]+)\/buckets$/, (p) => bucketsPage(p)],
    ['s3credentials', /^#\/p\/([^/]+)\/s3credentials$/, (p) => credentialsPage(p)],
    ['usage', /^#\/p\/([^/]+)\/usage$/, (p) => usagePage(p)],
    ['hosts', /^#\/hosts$/, () => hostsPage()],
    ['audit', /^#\/audit$/, () => auditPage()],
  ];

  async function route() {
    if (S.page) S.page.abort();
    S.page = new AbortController();
    delete document.body.dataset.ready;
    const hash = location.hash || `#/p/${encodeURIComponent(currentProject())}/instances`;
    const m = location.hash.match(/^#\/p\/([^/]+)/);
    if (m) localStorage.setItem('nimbus.project', decodeURIComponent(m[1]));
    renderNav();
    for (const [name, re, render] of ROUTES) {
      const parts = hash.match(re);
      if (!parts) continue;
      try {
        await render(...parts.slice(1).map(decodeURIComponent));
        if (!document.body.dataset.ready) markReady(name);
      } catch (e) {
        if (e.name !== 'AbortError') page('Something went wrong', errorBox(e));
      }
      return;
    }
    page('Not found', el('p', {}, `No console page ${hash}.`), el('a', { href: '#/projects' }, 'Projects'));
  }

  async function start() {
    $('signout').addEventListener('click', signOut);
    let ok = false;
    try { ok = await loadSession(); } catch (_) { ok = false; }
    if (!ok) { showSignIn(); return; }
    if (location.search) history.replaceState(null, '', `/ui/${location.hash}`);
    $('signin-page').hidden = true;
    $('main').hidden = false;
    $('signout').hidden = false;
    window.addEventListener('hashchange', route);
    route();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
