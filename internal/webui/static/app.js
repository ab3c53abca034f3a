// ember's dashboard. It speaks the daemon's own protocol: unary methods
// as POST /api/METHOD, streams on the websocket /api/ws (a request line,
// a response line, then frames: a kind byte, a 4-byte big-endian length,
// the payload). Lists are fetched again when the daemon's event stream
// says something changed; nothing polls.
'use strict';

const FRAME = { stdin: 0x69, stdinEOF: 0x65, resize: 0x72, stdout: 0x6f, stderr: 0x45, exit: 0x78, session: 0x73 };
// The daemon's live event stream (wire.Events; `ember events` follows it too).
const EVENTS_METHOD = 'event.follow';
const enc = new TextEncoder();
const dec = new TextDecoder();

// api calls a unary method and returns its result, or throws its error.
async function api(method, params) {
  const r = await fetch('/api/' + method, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(params || {}), credentials: 'same-origin',
  });
  if (r.status === 401) { location.reload(); throw new Error('signed out'); }
  const body = await r.json();
  if (body.error) { const e = new Error(body.error.message); e.code = body.error.code; throw e; }
  return body.result;
}

function frame(kind, payload) {
  const p = typeof payload === 'string' ? enc.encode(payload) : payload;
  const b = new Uint8Array(5 + p.length);
  b[0] = kind;
  new DataView(b.buffer).setUint32(1, p.length);
  b.set(p, 5);
  return b;
}

// Stream is one method on its own websocket. on.frame(kind, bytes) gets
// each frame; on.end(exit or error) once, when it ends.
class Stream {
  constructor(method, params, on) {
    this.on = on;
    this.buf = new Uint8Array(0);
    this.opened = false;
    this.ended = false;
    this.ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/ws');
    this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => this.ws.send(enc.encode(JSON.stringify({ method, params: params || {} }) + '\n'));
    this.ws.onmessage = (m) => this.data(new Uint8Array(m.data));
    this.ws.onclose = () => this.end(null, new Error('the connection to the daemon closed'));
  }
  data(chunk) {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf); b.set(chunk, this.buf.length);
    this.buf = b;
    if (!this.opened) {
      const nl = this.buf.indexOf(10);
      if (nl < 0) return;
      const resp = JSON.parse(dec.decode(this.buf.subarray(0, nl)));
      this.buf = this.buf.slice(nl + 1);
      if (resp.error) { this.end(null, Object.assign(new Error(resp.error.message), { code: resp.error.code })); return; }
      this.opened = true;
      if (this.on.open) this.on.open();
    }
    while (this.buf.length >= 5) {
      const n = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(1);
      if (this.buf.length < 5 + n) return;
      const kind = this.buf[0], p = this.buf.slice(5, 5 + n);
      this.buf = this.buf.slice(5 + n);
      if (kind === FRAME.exit) { this.end(JSON.parse(dec.decode(p)), null); return; }
      if (this.on.frame) this.on.frame(kind, p);
    }
  }
  send(kind, payload) { if (this.opened && this.ws.readyState === WebSocket.OPEN) this.ws.send(frame(kind, payload)); }
  end(exit, err) {
    if (this.ended) return;
    this.ended = true;
    if (this.on.end) this.on.end(exit, err);
    this.ws.close();
  }
  close() { this.ended = true; this.ws.close(); }
}

// Little DOM helpers.
const $ = (sel) => document.querySelector(sel);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}
function showError(err) {
  const box = $('#error');
  if (!err) { box.hidden = true; return; }
  box.textContent = String(err.message || err);
  box.hidden = false;
}
function size(bytes) {
  if (!bytes) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; bytes >= 1024 && i < u.length - 1; i++) bytes /= 1024;
  return bytes.toFixed(i ? 1 : 0) + ' ' + u[i];
}
function ago(t) {
  if (!t) return '';
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 90) return Math.round(s) + 's';
  if (s < 5400) return Math.round(s / 60) + 'm';
  if (s < 129600) return Math.round(s / 3600) + 'h';
  return Math.round(s / 86400) + 'd';
}
function stateCell(state) { return el('td', { class: 'state state-' + state }, state); }
function act(label, action, fn, cls) {
  return el('button', { type: 'button', 'data-action': action, class: cls || '', onclick: async (e) => {
    e.target.disabled = true;
    // What the action changed shows at once; the event stream would say
    // so too, a moment later.
    try { showError(null); await fn(); refreshSoon(); } catch (err) { showError(err); } finally { e.target.disabled = false; }
  } }, label);
}
function confirmDelete(what) {
  const d = $('#confirm');
  d.querySelector('p').textContent = 'Delete ' + what + '? Its disk goes with it.';
  return new Promise((resolve) => {
    d.onclose = () => resolve(d.returnValue === 'yes');
    d.returnValue = '';
    d.showModal();
  });
}
function openTerminal(vm, session) {
  window.open('/terminal?vm=' + encodeURIComponent(vm) + '&session=' + encodeURIComponent(session || 'main'), '_blank');
}

// The lists, fetched again (at most every 100 ms) whenever the event
// stream reports a change.
const view = { vms: [], images: [], ops: [], sessions: [] };
let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 100);
}
async function refresh() {
  try {
    const [vms, images, ops] = await Promise.all([api('vm.list'), api('image.list'), api('op.list')]);
    const sessions = [];
    await Promise.all((vms || []).filter((v) => v.state === 'running').map(async (v) => {
      try { for (const s of (await api('session.list', { ref: v.name })) || []) sessions.push(s); } catch (e) { /* it stopped meanwhile */ }
    }));
    Object.assign(view, { vms: vms || [], images: images || [], ops: ops || [], sessions });
    render();
    // The first full list on screen (the benchmark reads it).
    if (!performance.getEntriesByName('ember-lists-shown').length) performance.mark('ember-lists-shown');
  } catch (err) { showError(err); }
}

function render() {
  renderVMs(); renderImages(); renderOps(); renderSessions();
  watchRunningOps();
}

function renderVMs() {
  const body = $('#vms tbody');
  body.replaceChildren(...view.vms.map((v) => {
    const n = view.sessions.filter((s) => s.vm === v.name && s.state === 'running').length;
    const running = v.state === 'running';
    return el('tr', { 'data-vm': v.name },
      el('td', { class: 'name' }, v.name), stateCell(v.state),
      el('td', {}, v.ip || (v.ssh_port ? '127.0.0.1:' + v.ssh_port : '')),
      el('td', {}, v.image), el('td', {}, v.accel || ''), el('td', {}, String(v.cpus)),
      el('td', {}, v.memory_mib + ' MiB'), el('td', {}, running && v.started_at ? ago(v.started_at) : ''),
      el('td', {}, running ? String(n) : ''),
      el('td', { class: 'actions' },
        running ? act('Terminal', 'terminal', async () => openTerminal(v.name, 'main')) : null,
        running ? act('New session', 'new-session', async () => {
          const name = prompt('Session name', 'web-' + Date.now().toString(36));
          if (!name) return;
          await api('session.create', { ref: v.name, name });
          openTerminal(v.name, name);
        }) : null,
        running ? act('Pause', 'pause', () => api('vm.pause', { ref: v.name })) : null,
        v.state === 'paused' ? act('Resume', 'resume', () => api('vm.resume', { ref: v.name })) : null,
        running || v.state === 'paused' ? act('Stop', 'stop', () => api('vm.stop', { ref: v.name })) : null,
        v.state === 'stopped' ? act('Start', 'start', () => api('vm.start', { ref: v.name })) : null,
        act('Delete', 'delete', async () => {
          if (await confirmDelete(v.name)) await api('vm.delete', { ref: v.name, force: true });
        }, 'danger')));
  }));
  const sel = $('#create select[name=image]');
  const cur = sel.value;
  sel.replaceChildren(el('option', { value: '' }, 'default image'), ...view.images.map((i) => el('option', { value: i.name }, i.name)));
  sel.value = cur;
}

function renderImages() {
  $('#images tbody').replaceChildren(...view.images.map((i) => el('tr', { 'data-image': i.name },
    el('td', {}, i.name), el('td', {}, i.kind), el('td', {}, size(i.size_bytes)), el('td', {}, i.parent || ''),
    el('td', {}, [...(i.used_by || []), ...(i.children || [])].join(', ')), el('td', {}, i.id ? ago(i.created_at) + ' ago' : 'not built yet'))));
}

// Running operations are followed (op.wait sends a snapshot at every
// change), so their progress moves on the page as it happens.
const opWatchers = new Map();
function watchRunningOps() {
  for (const o of view.ops) {
    if (o.state !== 'running' || opWatchers.has(o.id) || opWatchers.size >= 16) continue;
    const s = new Stream('op.wait', { id: o.id }, {
      frame: (kind, p) => {
        if (kind !== FRAME.stdout) return;
        const snap = JSON.parse(dec.decode(p));
        const i = view.ops.findIndex((x) => x.id === snap.id);
        if (i >= 0) { view.ops[i] = Object.assign({}, view.ops[i], snap, { log: undefined }); renderOps(); }
      },
      end: () => { opWatchers.delete(o.id); },
    });
    opWatchers.set(o.id, s);
  }
}

function renderOps() {
  const ops = [...view.ops].sort((a, b) => new Date(b.created_at) - new Date(a.created_at));
  $('#ops tbody').replaceChildren(...ops.map((o) => el('tr', { 'data-op': o.id },
    el('td', {}, o.id.slice(0, 12)), el('td', {}, o.kind), el('td', {}, o.target), stateCell(o.state),
    el('td', {}, o.error || o.progress || ''),
    el('td', { class: 'actions' },
      act('Log', 'log', async () => followOp(o)),
      o.state === 'running' ? act('Cancel', 'cancel', () => api('op.cancel', { id: o.id })) : null))));
}

// followOp shows an operation's log, live until it finishes (op.wait
// sends a snapshot at every change, with the log lines not sent yet).
let opStream = null;
function followOp(o) {
  if (opStream) opStream.close();
  const box = $('#oplog'), pre = box.querySelector('pre');
  box.hidden = false;
  box.querySelector('h3').textContent = o.kind + ' ' + o.target + ' (' + o.id.slice(0, 12) + ')';
  pre.textContent = '';
  let next = 0;
  opStream = new Stream('op.wait', { id: o.id }, {
    frame: (kind, p) => {
      if (kind !== FRAME.stdout) return;
      let snap;
      try { snap = JSON.parse(dec.decode(p)); } catch (e) { pre.textContent += dec.decode(p); return; }
      const lines = snap.log || [], start = snap.log_start || 0;
      for (let i = Math.max(0, next - start); i < lines.length; i++) pre.textContent += lines[i] + '\n';
      next = Math.max(next, start + lines.length);
      if (snap.progress) box.querySelector('h3').textContent = o.kind + ' ' + o.target + ': ' + (snap.error || snap.progress);
      pre.scrollTop = pre.scrollHeight;
    },
    end: (exit, err) => {
      if (err) pre.textContent += '\n[' + err.message + ']\n';
      else if (!pre.textContent) pre.textContent = '(no log: only image builds and imports keep one)';
    },
  });
}

function renderSessions() {
  $('#sessions tbody').replaceChildren(...view.sessions.map((s) => el('tr', { 'data-session': s.vm + '/' + s.name },
    el('td', {}, s.vm), el('td', {}, s.name), el('td', {}, (s.command || []).join(' ')), stateCell(s.state),
    el('td', {}, String(s.attached)), el('td', {}, ago(s.created_at) + ' ago'),
    el('td', { class: 'actions' }, s.state === 'running' ? act('Open terminal', 'terminal', async () => openTerminal(s.vm, s.name)) : null))));
}

// The event stream: every event means "look again"; when it breaks it is
// opened again after a pause that grows to 5 s.
let eventsBackoff = 250;
function watchEvents() {
  const live = $('#live');
  new Stream(EVENTS_METHOD, {}, {
    open: () => { live.textContent = 'live'; live.className = 'live on'; eventsBackoff = 250; refresh(); },
    frame: () => refreshSoon(),
    end: (exit, err) => {
      live.textContent = 'not live: ' + (err ? err.message : 'the event stream ended') + '; reconnecting';
      live.className = 'live off';
      setTimeout(watchEvents, eventsBackoff);
      eventsBackoff = Math.min(eventsBackoff * 2, 5000);
    },
  });
}

// The terminal page: one xterm attached to a session through
// session.attach (create if missing). The daemon replays the scrollback
// first, so a reload shows the history. Closing the tab closes the
// websocket, which detaches: the session runs on.
function terminalPage(params) {
  const vm = params.get('vm'), name = params.get('session') || 'main';
  document.title = vm + ' · ' + name + ' · ember';
  $('#term-title').textContent = vm + ' / ' + name;
  const status = $('#term-status');
  const term = new Terminal({ cursorBlink: true, scrollback: 10000, convertEol: false });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($('#terminal'));
  fit.fit();
  window.emberTerminal = term; // for the browser tests
  status.textContent = 'attaching…';
  const s = new Stream('session.attach', { ref: vm, name, rows: term.rows, cols: term.cols, term: 'xterm-256color', create: true }, {
    open: () => { status.textContent = 'attached'; document.body.dataset.attached = 'true'; term.focus(); },
    frame: (kind, p) => {
      if (kind === FRAME.stdout || kind === FRAME.stderr) { term.write(p); return; }
      if (kind !== FRAME.session) return;
      const ev = JSON.parse(dec.decode(p));
      if (ev.replaced) status.textContent = 'attached (a new session: the one before had exited with status ' + ev.replaced.exit_code + ')';
      if (ev.exited != null) status.textContent = 'its process has exited (status ' + ev.exited + '): this is what it left';
    },
    end: (exit, err) => {
      document.body.dataset.attached = 'false';
      if (err) status.textContent = 'detached: ' + err.message;
      else if (exit && exit.error) status.textContent = 'ended: ' + exit.error.message;
      else status.textContent = 'the session ended (status ' + (exit ? exit.code : '?') + ')';
    },
  });
  term.onData((d) => s.send(FRAME.stdin, d));
  term.onBinary((d) => s.send(FRAME.stdin, Uint8Array.from(d, (c) => c.charCodeAt(0))));
  term.onResize(({ rows, cols }) => s.send(FRAME.resize, JSON.stringify({ rows, cols })));
  window.addEventListener('resize', () => fit.fit());
}

function route() {
  const path = location.pathname.replace(/\/+$/, '') || '/';
  const page = { '/': 'vms', '/images': 'images', '/operations': 'operations', '/sessions': 'sessions', '/terminal': 'terminal' }[path] || 'vms';
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== 'page-' + page;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === page);
  if (page === 'terminal') {
    $('#live').hidden = true;
    terminalPage(new URLSearchParams(location.search));
    return;
  }
  $('#create').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(e.target), p = { name: f.get('name') };
    if (f.get('image')) p.image = f.get('image');
    for (const k of ['cpus', 'memory_mib', 'disk_gib']) if (f.get(k)) p[k] = Number(f.get(k));
    try {
      showError(null);
      const op = await api('vm.create', p);
      e.target.reset();
      refreshSoon();
      void op;
    } catch (err) { showError(err); }
  });
  refresh();
  watchEvents();
}

route();
