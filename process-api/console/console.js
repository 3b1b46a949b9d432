// Operations console: live sync health, dead letters, parked events,
// reconciliation exceptions and a SKU drill-down. Plain ES2020, no
// dependencies. Server strings only ever reach the page as text nodes.
'use strict';

(() => {
  const TOKEN_KEY = 'ops-console-token';
  const HEALTH_POLL_MS = 2000;
  const LIST_REFRESH_MS = 5000;
  const SLOW_LIST_REFRESH_MS = 10000;
  const CLOCK_TICK_MS = 5000;
  const LOCATION_ROWS_MAX = 200;
  const JOURNAL_TAIL = 50;

  const $ = (selector, root = document) => root.querySelector(selector);

  // ---------------------------------------------------------------- DOM

  /** Builds an element; strings become text nodes, never markup. */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === 'class') node.className = value;
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const td = (content, cls) => h('td', { class: cls }, content);
  const numTd = (n, digits) => td(fmtNum(n, digits), 'num');
  const textTd = (text, cls) => h('td', { class: cls, title: text || null }, text == null || text === '' ? '—' : text);

  // ---------------------------------------------------------- formatting

  function fmtNum(n, digits = 0) {
    if (n == null || n === '' || Number.isNaN(Number(n))) return '—';
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
  }

  /** Decimal strings such as "24.50" keep two decimals. */
  function fmtMoney(value) {
    const n = Number(value);
    if (value == null || value === '' || Number.isNaN(n)) return value == null ? '—' : String(value);
    return n.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function fmtMs(ms) {
    return ms == null ? '—' : `${fmtNum(ms, ms < 10 ? 1 : 0)} ms`;
  }

  /** 45 → "45 s", 720 → "12 min", 7500 → "2 h 5 min". */
  function fmtDuration(seconds) {
    if (seconds == null || !Number.isFinite(Number(seconds))) return '—';
    const s = Math.max(0, Math.round(Number(seconds)));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const hr = Math.floor(m / 60);
    if (hr < 24) return m % 60 ? `${hr} h ${m % 60} min` : `${hr} h`;
    const d = Math.floor(hr / 24);
    return hr % 24 ? `${d} d ${hr % 24} h` : `${d} d`;
  }

  function relTime(iso) {
    if (!iso) return 'never';
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const diff = (Date.now() - t) / 1000;
    if (Math.abs(diff) < 5) return 'just now';
    return diff > 0 ? `${fmtDuration(diff)} ago` : `in ${fmtDuration(-diff)}`;
  }

  function fullTime(iso) {
    const t = Date.parse(iso);
    return Number.isNaN(t) ? String(iso) : `${new Date(t).toLocaleString()} (${iso})`;
  }

  /** Relative time with the full timestamp in the title; refreshed by the clock tick. */
  function timeEl(iso) {
    if (!iso) return h('span', { class: 'muted' }, 'never');
    return h('time', { datetime: iso, title: fullTime(iso), 'data-relative': true }, relTime(iso));
  }

  function tickClocks() {
    for (const el of document.querySelectorAll('time[data-relative]')) {
      el.textContent = relTime(el.getAttribute('datetime'));
    }
  }

  // ----------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.name = 'ApiError';
      this.status = status;
    }
  }

  const isAbort = (e) => e && e.name === 'AbortError';

  /** The session: token, an AbortController for everything it started, timers, streams. */
  const session = { token: null, abort: null, timers: [], streams: [] };

  async function problemFrom(response) {
    let body = null;
    const text = await response.text().catch(() => '');
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    const p = body && typeof body === 'object' ? body : {};
    const message = p.detail || p.title || text.slice(0, 200) || `HTTP ${response.status} ${response.statusText}`;
    return new ApiError(response.status, message);
  }

  async function api(method, path, { body, token = session.token, signal = session.abort && session.abort.signal } = {}) {
    const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    const init = { method, headers, signal, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new ApiError(0, `Network error: ${e.message}`);
    }
    if (!response.ok) {
      const error = await problemFrom(response);
      if (response.status === 401 && session.token && token === session.token) endSession(error);
      throw error;
    }
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  const enc = encodeURIComponent;
  function withQuery(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, String(v));
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }

  // ----------------------------------------------------------------- SSE

  /** Incremental parser of the text/event-stream wire format. */
  class SseParser {
    constructor(lastId, onEvent) {
      this.buffer = '';
      this.lastId = lastId || '';
      this.onEvent = onEvent;
      this.type = '';
      this.data = [];
    }

    push(chunk) {
      this.buffer += chunk;
      const eol = /\r\n|\r|\n/g;
      let pos = 0;
      let match;
      while ((match = eol.exec(this.buffer))) {
        // A lone trailing \r may be the first half of a \r\n split across chunks.
        if (match[0] === '\r' && match.index === this.buffer.length - 1) break;
        this.line(this.buffer.slice(pos, match.index));
        pos = eol.lastIndex;
      }
      this.buffer = this.buffer.slice(pos);
    }

    line(line) {
      if (line === '') return this.dispatch();
      if (line.startsWith(':')) return undefined; // comment / keep-alive
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.type = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\0')) this.lastId = value;
      // `retry:` is ignored: reconnection follows our own 1 s → 10 s backoff.
      return undefined;
    }

    dispatch() {
      if (this.data.length) {
        this.onEvent({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastId });
      }
      this.type = '';
      this.data = [];
    }
  }

  /**
   * An SSE subscription over fetch (EventSource cannot send Authorization).
   * Reconnects with backoff and resumes with Last-Event-ID.
   *   onEvent({type, data, id}); onState('open' | 'retrying' | 'failed', error?)
   *   idleMs: reconnect when nothing (not even a comment) arrives for this long.
   *   fatal: statuses that stop the stream instead of retrying.
   */
  class SseStream {
    constructor(url, { onEvent, onState = () => {}, idleMs = 0, fatal = [] }) {
      Object.assign(this, { url, onEvent, onState, idleMs, fatal });
      this.lastId = '';
      this.closed = false;
      this.controller = null;
    }

    start() {
      this.run();
      return this;
    }

    close() {
      this.closed = true;
      if (this.controller) this.controller.abort();
    }

    async run() {
      let delay = 1000;
      while (!this.closed) {
        const controller = new AbortController();
        this.controller = controller;
        try {
          const headers = { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' };
          if (this.lastId) headers['Last-Event-ID'] = this.lastId;
          const response = await fetch(this.url, { headers, signal: controller.signal, cache: 'no-store' });
          if (!response.ok) throw await problemFrom(response);
          const type = response.headers.get('Content-Type') || '';
          if (!type.includes('text/event-stream') || !response.body) {
            throw new ApiError(response.status, `not an event stream (${type || 'no content type'})`);
          }
          delay = 1000;
          this.onState('open');
          await this.read(response.body.getReader(), controller);
        } catch (e) {
          if (this.closed) return;
          if (e.status === 401) { endSession(e); return; }
          if (this.fatal.includes(e.status)) { this.onState('failed', e); return; }
          if (!isAbort(e)) console.warn(`stream ${this.url}:`, e.message);
        }
        if (this.closed) return;
        this.onState('retrying');
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 10000);
      }
    }

    async read(reader, controller) {
      const decoder = new TextDecoder();
      const parser = new SseParser(this.lastId, (event) => {
        this.lastId = event.id;
        try { this.onEvent(event); } catch (e) { console.error('event handler failed', e); }
      });
      let idle = null;
      const kick = () => {
        if (!this.idleMs) return;
        clearTimeout(idle);
        idle = setTimeout(() => controller.abort(), this.idleMs);
      };
      kick();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          kick();
          parser.push(decoder.decode(value, { stream: true }));
        }
      } finally {
        clearTimeout(idle);
      }
    }
  }

  // ------------------------------------------------------ banner & toast

  let bannerTimer = null;
  let toastTimer = null;

  function showBanner(message) {
    const banner = $('#banner');
    banner.textContent = message;
    banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { banner.hidden = true; }, 12000);
  }

  function showToast(message) {
    const toast = $('#toast');
    toast.textContent = message;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toast.hidden = true; }, 4000);
  }

  // ----------------------------------------------------- keyed tables

  /**
   * Updates tbody to show items in order, reusing rows by key so an open
   * note form (and its focus) survives refreshes.
   *   key(item), attrs(item) → row attributes, cells(item) → [td],
   *   actions(item) → node for the last cell (optional), empty text.
   */
  function syncTable(tbody, items, { key, attrs = () => ({}), cells, actions, empty }) {
    tbody.dataset.emptyText = empty;
    const existing = new Map();
    for (const tr of tbody.querySelectorAll(':scope > tr[data-key]')) existing.set(tr.dataset.key, tr);
    const emptyRow = tbody.querySelector(':scope > tr.empty');
    if (items.length === 0) {
      for (const tr of existing.values()) tr.remove();
      if (!emptyRow) tbody.append(makeEmptyRow(tbody));
      return;
    }
    if (emptyRow) emptyRow.remove();
    let ref = tbody.firstElementChild;
    for (const item of items) {
      const k = String(key(item));
      const signature = JSON.stringify(item);
      let tr = existing.get(k);
      if (!tr) {
        tr = h('tr', { ...attrs(item), 'data-key': k }, cells(item));
        if (actions) tr.append(h('td', { class: 'actions' }, actions(item)));
      } else {
        existing.delete(k);
        if (tr.rowSignature !== signature) {
          cells(item).forEach((cell, i) => tr.children[i].replaceWith(cell));
        }
      }
      tr.rowSignature = signature;
      if (tr === ref) ref = ref.nextElementSibling;
      else tbody.insertBefore(tr, ref);
    }
    for (const tr of existing.values()) tr.remove();
  }

  function makeEmptyRow(tbody) {
    const cols = tbody.closest('table').querySelectorAll('thead th').length || 1;
    return h('tr', { class: 'empty' }, h('td', { colspan: cols }, tbody.dataset.emptyText || 'Nothing here'));
  }

  function removeRow(tr) {
    const tbody = tr.parentElement;
    tr.remove();
    if (tbody && !tbody.querySelector(':scope > tr[data-key]') && !tbody.querySelector(':scope > tr.empty')) {
      tbody.append(makeEmptyRow(tbody));
    }
  }

  /** Row buttons; an action with a note gets an inline note form instead of running at once. */
  function actionButtons(defs) {
    return Object.entries(defs).map(([name, def]) =>
      h('button', { type: 'button', class: `${name}${def.note ? '' : ' primary-soft'}` }, def.label));
  }

  /**
   * Delegated row actions for a table body.
   *   defs: { name: { label, note?: placeholder, run(dataset, note), done(dataset) } }
   *   after(): refetch once an action succeeded.
   */
  function wireActions(tbody, defs, after) {
    tbody.addEventListener('click', (event) => {
      const button = event.target.closest('button');
      const tr = button && button.closest('tr[data-key]');
      if (!tr || !tbody.contains(tr)) return;
      if (button.classList.contains('cancel')) { closeNoteForm(tr); return; }
      for (const [name, def] of Object.entries(defs)) {
        if (button.classList.contains(name)) {
          if (def.note) openNoteForm(tr, name, def);
          else runAction(tr, def, undefined, after);
          return;
        }
        if (button.classList.contains(`confirm-${name}`)) {
          submitNote(tr, name, def, after);
          return;
        }
      }
    });
    tbody.addEventListener('keydown', (event) => {
      if (!event.target.matches('input.note')) return;
      const tr = event.target.closest('tr[data-key]');
      const form = event.target.closest('.note-form');
      if (event.key === 'Escape') closeNoteForm(tr);
      if (event.key === 'Enter') {
        event.preventDefault();
        const name = form.dataset.action;
        submitNote(tr, name, defs[name], after);
      }
    });
  }

  function openNoteForm(tr, name, def) {
    const current = tr.querySelector('.note-form');
    if (current && current.dataset.action === name) { $('input.note', current).focus(); return; }
    if (current) current.remove();
    const input = h('input', { type: 'text', class: 'note', placeholder: def.note, maxlength: 1000, 'aria-label': def.note });
    const form = h('div', { class: 'note-form', 'data-action': name },
      input,
      h('button', { type: 'button', class: `confirm-${name} danger` }, `Confirm ${def.label.toLowerCase()}`),
      h('button', { type: 'button', class: 'cancel' }, 'Cancel'));
    tr.querySelector('td.actions').append(form);
    input.focus();
  }

  function closeNoteForm(tr) {
    const form = tr && tr.querySelector('.note-form');
    if (form) form.remove();
  }

  function submitNote(tr, name, def, after) {
    const input = tr.querySelector('.note-form input.note');
    const note = input ? input.value.trim() : '';
    if (!note) {
      if (input) { input.classList.add('invalid'); input.focus(); }
      showBanner(`A note is required to ${def.label.toLowerCase()}.`);
      return;
    }
    runAction(tr, def, note, after);
  }

  async function runAction(tr, def, note, after) {
    const controls = tr.querySelectorAll('button, input');
    controls.forEach((c) => { c.disabled = true; });
    tr.classList.add('busy');
    try {
      await def.run(tr.dataset, note);
      removeRow(tr);
      $('#banner').hidden = true;
      showToast(def.done(tr.dataset));
      after();
    } catch (e) {
      if (isAbort(e)) return;
      showBanner(e.message);
      controls.forEach((c) => { c.disabled = false; });
      tr.classList.remove('busy');
    }
  }

  // ------------------------------------------------------------- loaders

  /**
   * Fetch-and-render with one request in flight. refresh(true) also
   * discards answers of requests started earlier (after an action, so a
   * stale list cannot bring back a row just removed).
   */
  function loader(section, fetcher, render) {
    let generation = 0;
    let running = false;
    let again = false;
    const errorBox = section && $('.section-error', section);
    async function refresh(invalidate = false) {
      if (invalidate) generation += 1;
      if (running) { again = true; return; }
      running = true;
      try {
        do {
          again = false;
          const mine = generation;
          const token = session.token;
          const data = await fetcher();
          if (mine !== generation || token !== session.token) { again = true; continue; }
          render(data);
          if (errorBox) errorBox.hidden = true;
        } while (again && session.token);
      } catch (e) {
        if (!isAbort(e) && errorBox && session.token) {
          errorBox.textContent = `Could not load: ${e.message}`;
          errorBox.hidden = false;
        }
      } finally {
        running = false;
      }
    }
    return { refresh };
  }

  // ------------------------------------------------------- health cards

  function card(id, label, value, sub, level, title) {
    return h('div', { class: `card ${level || ''}`, id: `card-${id}`, title: title || sub || null },
      h('div', { class: 'card-label' }, label),
      h('div', { class: 'card-value' }, value),
      h('div', { class: 'card-sub' }, sub || '\u00a0'));
  }

  const level = (value, warnAt, badAt) =>
    (value == null ? '' : value >= badAt ? 'bad' : value >= warnAt ? 'warn' : 'ok');

  function renderCards(hl) {
    const ingest = hl.ingest || {};
    const feed = hl.feed || {};
    const erp = hl.erp || {};
    const breaker = erp.breaker || {};
    const postings = hl.postings || {};
    const webhooks = hl.webhooks || {};
    const recon = hl.reconciliation || {};
    const locations = hl.locations || [];
    const stale = locations.filter((l) => l.stale).length;

    const erpState = { closed: ['connected', 'ok'], half_open: ['probing', 'warn'], open: ['down', 'bad'] }[breaker.state]
      || [breaker.state || 'unknown', ''];
    const erpSub = breaker.state === 'open' && breaker.open_until
      ? `next probe ${relTime(breaker.open_until)}`
      : `${fmtNum(breaker.consecutive_failures)} failures · last ok ${relTime(erp.last_success_at)}`;
    const lastRun = recon.last_run;

    $('#cards').replaceChildren(
      card('ingest', 'Ingest rate', hl.ingest ? `${fmtNum(ingest.events_per_second, 1)} ev/s` : '—',
        hl.ingest ? `${fmtNum(ingest.events_last_minute)} in the last minute` : ''),
      card('propagation', 'Propagation p50 / p99',
        `${fmtNum(ingest.propagation_p50_ms, 1)} / ${fmtMs(ingest.propagation_p99_ms)}`,
        'received → published', level(ingest.propagation_p99_ms, 2000, 10000),
        `p50 ${fmtMs(ingest.propagation_p50_ms)}, p99 ${fmtMs(ingest.propagation_p99_ms)}: event received → change published`),
      card('feed', 'Change feed backlog', fmtNum(feed.backlog),
        hl.feed ? `oldest ${fmtDuration(feed.oldest_backlog_age_seconds)} · head ${fmtNum(feed.head)}` : '',
        feed.backlog ? level(feed.oldest_backlog_age_seconds, 30, 300) : 'ok'),
      card('erp', 'ERP link', erpState[0], erpSub, erpState[1], erp.last_error ? `Last error: ${erp.last_error}` : null),
      card('pending', 'Postings pending', fmtNum(postings.pending),
        `${fmtNum(postings.in_flight)} in flight · ${fmtNum(postings.blocked_by_dead)} blocked`,
        postings.blocked_by_dead > 0 ? 'warn' : ''),
      card('oldest-pending', 'Oldest pending',
        postings.pending || postings.in_flight ? fmtDuration(postings.oldest_pending_age_seconds) : '—',
        `${fmtNum(postings.posted)} posted · ${fmtNum(postings.discarded)} discarded`,
        level(postings.oldest_pending_age_seconds, 300, 1800)),
      card('dead', 'Dead postings', fmtNum(postings.dead), 'need replay or discard', postings.dead > 0 ? 'bad' : 'ok'),
      card('parked', 'Parked events', fmtNum(hl.events && hl.events.parked), 'waiting for master data',
        hl.events && hl.events.parked > 0 ? 'warn' : 'ok'),
      card('exceptions', 'Open exceptions', fmtNum(recon.open_exceptions),
        lastRun ? `last run ${relTime(lastRun.finished_at || lastRun.started_at)} · ${lastRun.status}` : 'no run yet',
        recon.open_exceptions > 0 ? 'warn' : 'ok'),
      card('webhooks', 'Webhook dead letters', fmtNum(webhooks.dead_letters),
        hl.webhooks ? `${fmtNum(webhooks.subscriptions)} subscriptions` : '', webhooks.dead_letters > 0 ? 'bad' : 'ok'),
      card('stale', 'Stale locations', fmtNum(stale), `of ${fmtNum(locations.length)} locations`, stale > 0 ? 'warn' : 'ok'),
    );
  }

  // ------------------------------------------------------------- impact

  const FLOW_STATUSES = ['ok', 'degraded', 'down'];
  const badge = (status) =>
    h('span', { class: `badge ${FLOW_STATUSES.includes(status) ? status : 'unknown'}` }, status || 'unknown');
  const listText = (values) => (values && values.length ? values.join(', ') : '—');

  function renderImpact(impact) {
    const panel = $('#impact');
    const summary = $('#impact-summary');
    if (!impact) {
      summary.replaceChildren(h('p', { class: 'muted' }, 'No impact data from the server.'));
      $('#impact-flows-body').replaceChildren();
      return;
    }
    const flows = impact.flows || [];
    const worst = flows.some((f) => f.status === 'down') ? 'down'
      : flows.some((f) => f.status === 'degraded') ? 'degraded' : 'ok';
    panel.dataset.status = worst;
    const sentences = impact.summary || [];
    summary.replaceChildren(sentences.length
      ? h('ul', { class: 'summary' }, sentences.map((s) => h('li', null, s)))
      : h('p', { class: 'all-ok' }, 'All flows healthy'));
    $('#impact-flows-body').replaceChildren(...flows.map((f) => h('tr', { 'data-flow': f.flow },
      td(badge(f.status)),
      h('td', { title: f.flow }, h('strong', null, f.label || f.flow)),
      textTd(f.headline, 'wrap'),
      td(f.since ? timeEl(f.since) : '—'),
      numTd(f.waiting), numTd(f.locations_affected), numTd(f.skus_affected),
      textTd(listText(f.channels_affected)),
      textTd(listText(f.top_locations)))));
  }

  // ----------------------------------------------------------- locations

  let locationsSignature = '';

  function renderLocations(force = false) {
    const all = (state.health && state.health.locations) || [];
    const query = $('#location-filter').value.trim().toLowerCase();
    const signature = `${query}\n${JSON.stringify(all)}`;
    if (!force && signature === locationsSignature) return;
    locationsSignature = signature;
    const when = (l) => (l.last_event_at ? Date.parse(l.last_event_at) : -Infinity);
    const rows = all
      .filter((l) => !query || l.location_id.toLowerCase().includes(query))
      .sort((a, b) => (b.stale - a.stale) || (when(a) - when(b)) || a.location_id.localeCompare(b.location_id));
    const shown = rows.slice(0, LOCATION_ROWS_MAX);
    const stale = all.filter((l) => l.stale).length;
    $('#locations-count').textContent = `${fmtNum(stale)} stale of ${fmtNum(all.length)}`
      + (rows.length > shown.length ? ` · showing ${fmtNum(shown.length)} of ${fmtNum(rows.length)}` : '');
    const body = $('#locations-body');
    if (!shown.length) {
      body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 3 }, query ? 'No matching locations' : 'No locations')));
      return;
    }
    body.replaceChildren(...shown.map((l) => h('tr', { 'data-location-id': l.location_id, class: l.stale ? 'stale' : null },
      td(l.location_id),
      td(timeEl(l.last_event_at)),
      td(h('span', { class: `badge ${l.stale ? 'down' : 'ok'}` }, l.stale ? 'stale' : 'fresh')))));
  }

  // -------------------------------------------------------- dead postings

  const deadPostings = loader($('#dead-letters'),
    () => api('GET', withQuery('/v1/ops/postings', { status: 'dead', limit: 100 })),
    (page) => {
      const postings = page.postings || [];
      const total = state.health && state.health.postings ? state.health.postings.dead : postings.length;
      $('#dead-count').textContent = total > postings.length
        ? `showing ${fmtNum(postings.length)} of ${fmtNum(total)}` : fmtNum(postings.length);
      syncTable($('#dead-letters-body'), postings, {
        key: (p) => p.posting_id,
        attrs: (p) => ({ 'data-posting-id': p.posting_id }),
        cells: (p) => [
          h('td', { title: `created ${fullTime(p.created_at)}` }, String(p.posting_id)),
          textTd(p.event_id, 'mono'), td(p.kind), td(p.location_id), td(p.sku),
          numTd(p.quantity), numTd(p.attempts), textTd(p.last_error, 'error-text clip'), numTd(p.waiting_behind),
        ],
        actions: () => actionButtons(POSTING_ACTIONS),
        empty: 'No dead letters',
      });
    });

  const POSTING_ACTIONS = {
    replay: {
      label: 'Replay',
      run: (d) => api('POST', `/v1/ops/postings/${enc(d.postingId)}/replay`),
      done: (d) => `Posting ${d.postingId} queued again`,
    },
    discard: {
      label: 'Discard',
      note: 'Why discard? (required)',
      run: (d, note) => api('POST', `/v1/ops/postings/${enc(d.postingId)}/discard`, { body: { note } }),
      done: (d) => `Posting ${d.postingId} discarded`,
    },
  };
  wireActions($('#dead-letters-body'), POSTING_ACTIONS, () => deadPostings.refresh(true));

  // ------------------------------------------------- webhook dead letters

  const WEBHOOK_ACTIONS = {
    replay: {
      label: 'Replay',
      run: (d) => api('POST', `/v1/ops/webhooks/${enc(d.subscriptionId)}/dead-letters/${enc(d.webhookDeadLetterId)}/replay`),
      done: (d) => `Webhook dead letter ${d.webhookDeadLetterId} replayed`,
    },
    discard: {
      label: 'Discard',
      note: 'Why discard? (required)',
      run: (d, note) => api('POST', `/v1/ops/webhooks/${enc(d.subscriptionId)}/dead-letters/${enc(d.webhookDeadLetterId)}/discard`, { body: { note } }),
      done: (d) => `Webhook dead letter ${d.webhookDeadLetterId} discarded`,
    },
  };

  const webhookDeadLetters = loader($('#webhook-dead-letters'),
    async () => {
      const { subscriptions = [] } = await api('GET', '/v1/ops/webhooks');
      const failing = subscriptions.filter((s) => s.dead_letters > 0);
      const lists = await Promise.all(failing.map((s) =>
        api('GET', `/v1/ops/webhooks/${enc(s.subscription_id)}/dead-letters`).then((r) => r.dead_letters || [])));
      return { subscriptions, failing: failing.map((sub, i) => ({ sub, deadLetters: lists[i] })) };
    },
    renderWebhooks);

  function webhookBlock(subscriptionId) {
    const tbody = h('tbody');
    wireActions(tbody, WEBHOOK_ACTIONS, () => webhookDeadLetters.refresh(true));
    return h('div', { class: 'webhook-sub', 'data-subscription-id': subscriptionId },
      h('div', { class: 'webhook-head' }),
      h('div', { class: 'table-wrap' }, h('table', { class: 'dense' },
        h('thead', null, h('tr', null, ['Id', 'Seq', 'Attempts', 'Last error', 'Created', 'Actions'].map((t) => h('th', null, t)))),
        tbody)));
  }

  function renderWebhooks({ subscriptions, failing }) {
    const container = $('#webhook-subs');
    const blocks = new Map([...container.querySelectorAll('.webhook-sub')].map((b) => [b.dataset.subscriptionId, b]));
    const total = failing.reduce((n, f) => n + f.sub.dead_letters, 0);
    $('#webhook-count').textContent = `${fmtNum(total)} across ${fmtNum(subscriptions.length)} subscriptions`;
    const ordered = failing.map(({ sub, deadLetters }) => {
      const id = String(sub.subscription_id);
      const block = blocks.get(id) || webhookBlock(id);
      blocks.delete(id);
      $('.webhook-head', block).replaceChildren(
        h('strong', { class: 'mono' }, sub.url || id),
        h('span', { class: `badge ${sub.status === 'active' ? 'ok' : 'degraded'}` }, sub.status || '?'),
        h('span', { class: 'muted' }, `cursor ${fmtNum(sub.cursor)} · ${fmtNum(sub.dead_letters)} dead letters`));
      syncTable($('tbody', block), deadLetters, {
        key: (d) => d.dead_letter_id,
        attrs: (d) => ({ 'data-webhook-dead-letter-id': d.dead_letter_id, 'data-subscription-id': id }),
        cells: (d) => [td(String(d.dead_letter_id)), numTd(d.seq), numTd(d.attempts),
          textTd(d.last_error, 'error-text clip'), td(timeEl(d.created_at))],
        actions: () => actionButtons(WEBHOOK_ACTIONS),
        empty: 'No dead letters',
      });
      return block;
    });
    for (const stale of blocks.values()) stale.remove();
    const placeholder = $(':scope > p.empty', container);
    if (!ordered.length) {
      if (!placeholder) container.append(h('p', { class: 'empty' }, 'No webhook dead letters'));
    } else if (placeholder) {
      placeholder.remove();
    }
    ordered.forEach((block, i) => {
      if (container.children[i] !== block) container.insertBefore(block, container.children[i] || null);
    });
  }

  // ---------------------------------------------------------- exceptions

  const EXCEPTION_ACTIONS = {
    approve: {
      label: 'Approve',
      run: (d) => api('POST', `/v1/ops/reconciliation/exceptions/${enc(d.exceptionId)}/approve`),
      done: (d) => `Exception ${d.exceptionId} approved: platform adjusted to the ERP figure`,
    },
    reject: {
      label: 'Reject',
      note: 'Why reject? (required)',
      run: (d, note) => api('POST', `/v1/ops/reconciliation/exceptions/${enc(d.exceptionId)}/reject`, { body: { note } }),
      done: (d) => `Exception ${d.exceptionId} rejected`,
    },
  };

  const exceptions = loader($('#exceptions'),
    () => api('GET', withQuery('/v1/ops/reconciliation/exceptions', { status: 'open' })),
    (list) => {
      const items = list.exceptions || [];
      $('#exceptions-count').textContent = fmtNum(items.length);
      syncTable($('#exceptions-body'), items, {
        key: (x) => x.exception_id,
        attrs: (x) => ({ 'data-exception-id': x.exception_id }),
        cells: (x) => [
          h('td', { title: `run ${x.run_id}` }, String(x.exception_id)),
          td(x.location_id), td(x.sku), numTd(x.platform_on_hand), numTd(x.erp_quantity),
          td(`${x.difference > 0 ? '+' : ''}${fmtNum(x.difference)}`, `num ${x.difference < 0 ? 'neg' : 'pos'}`),
          td(`${fmtMoney(x.value_at_cost)} ${x.currency || ''}`.trim(), 'num'),
          td(timeEl(x.created_at)),
        ],
        actions: () => actionButtons(EXCEPTION_ACTIONS),
        empty: 'No open exceptions',
      });
    });
  wireActions($('#exceptions-body'), EXCEPTION_ACTIONS, () => exceptions.refresh(true));

  // -------------------------------------------------------------- parked

  const parked = loader($('#parked'),
    () => api('GET', withQuery('/v1/inventory/parked', { limit: 100 })),
    (page) => {
      const items = page.parked || [];
      $('#parked-total').textContent = page.total > items.length
        ? `showing ${fmtNum(items.length)} of ${fmtNum(page.total)}` : fmtNum(page.total);
      syncTable($('#parked-body'), items, {
        key: (p) => p.event_id,
        attrs: (p) => ({ 'data-event-id': p.event_id }),
        cells: (p) => {
          const e = p.event || {};
          return [textTd(p.event_id, 'mono'), textTd(p.reason, 'wrap'), td(timeEl(p.parked_at)),
            td(e.type || '—'), td(e.sku || '—'), td(e.location_id || '—'), numTd(e.quantity)];
        },
        empty: 'No parked events',
      });
    });

  async function replayParked() {
    const button = $('#replay-parked');
    button.disabled = true;
    $('#parked-result').textContent = 'Retrying…';
    try {
      const result = await api('POST', '/v1/inventory/parked/replay');
      $('#parked-result').textContent = `applied ${fmtNum(result.applied)}, remaining ${fmtNum(result.remaining)}`;
      parked.refresh(true);
    } catch (e) {
      if (isAbort(e)) return;
      $('#parked-result').textContent = '';
      showBanner(e.message);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------- health

  const state = { health: null, live: false, polling: false };

  function setLive(live) {
    state.live = live;
    const el = $('#live-status');
    el.textContent = live ? 'live' : 'reconnecting…';
    el.className = `live-status ${live ? 'on' : 'off'}`;
  }

  function onHealth(health, via) {
    const previous = state.health;
    state.health = health;
    const changed = (get) => {
      if (!previous) return true;
      try { return get(previous) !== get(health); } catch { return true; }
    };
    renderCards(health);
    renderImpact(health.impact);
    renderLocations();
    $('#updated-at').textContent = `updated ${new Date().toLocaleTimeString()} (${via})`;
    if (changed((x) => x.postings.dead) || changed((x) => x.postings.pending)) deadPostings.refresh();
    if (changed((x) => x.events.parked)) parked.refresh();
    if (changed((x) => x.reconciliation.open_exceptions)) exceptions.refresh();
    if (changed((x) => x.webhooks && x.webhooks.dead_letters)) webhookDeadLetters.refresh();
  }

  async function pollHealth() {
    if (state.live || state.polling || !session.token) return;
    state.polling = true;
    try {
      onHealth(await api('GET', '/v1/ops/sync-health'), 'polling');
    } catch (e) {
      if (!isAbort(e)) $('#updated-at').textContent = `health poll failed: ${e.message}`;
    } finally {
      state.polling = false;
    }
  }

  // ----------------------------------------------------------- drill-down

  const drill = { sku: null, stream: null, generation: 0, loaded: false, queued: [], rows: new Map(), changes: 0 };
  const FIGURES = ['on_hand', 'unsellable', 'reserved', 'safety_stock', 'in_transit', 'available'];

  function closeDrill() {
    if (drill.stream) drill.stream.close();
    Object.assign(drill, { sku: null, stream: null, loaded: false, queued: [], rows: new Map(), changes: 0 });
    drill.generation += 1;
    $('#drill-live').textContent = '';
    $('#live-changes').textContent = '';
  }

  function positionRow(p) {
    return h('tr', { 'data-location-id': p.location_id },
      td(p.location_id), FIGURES.map((f) => numTd(p[f])), td(timeEl(p.updated_at)));
  }

  function renderPositions() {
    const positions = [...drill.rows.values()].sort((a, b) => a.location_id.localeCompare(b.location_id));
    $('#positions-body').replaceChildren(...(positions.length
      ? positions.map(positionRow)
      : [h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'No positions for this SKU'))]));
    renderTotals();
  }

  function renderTotals() {
    const totals = Object.fromEntries(FIGURES.map((f) => [f, 0]));
    for (const p of drill.rows.values()) for (const f of FIGURES) totals[f] += Number(p[f]) || 0;
    $('#positions-total').replaceChildren(h('tr', { class: 'totals' },
      td(`Total (${fmtNum(drill.rows.size)} locations)`), FIGURES.map((f) => numTd(totals[f])), td('')));
  }

  function applyChange(change) {
    const current = drill.rows.get(change.location_id);
    const position = { ...(current || { location_id: change.location_id, sku: change.sku }) };
    for (const f of FIGURES) if (change[f] != null) position[f] = change[f];
    position.updated_at = change.changed_at || position.updated_at;
    drill.rows.set(change.location_id, position);
    const body = $('#positions-body');
    let tr = current && $(`tr[data-location-id="${CSS.escape(change.location_id)}"]`, body);
    if (tr) {
      const fresh = positionRow(position);
      tr.replaceWith(fresh);
      tr = fresh;
      renderTotals();
    } else {
      renderPositions();
      tr = $(`tr[data-location-id="${CSS.escape(change.location_id)}"]`, body);
    }
    if (tr) tr.classList.add('flash');
    drill.changes += 1;
    $('#live-changes').textContent = `${fmtNum(drill.changes)} live change${drill.changes === 1 ? '' : 's'} received`;
  }

  function onChangeEvent(event) {
    if (event.type !== 'change') return;
    const change = JSON.parse(event.data);
    if (change.sku !== drill.sku) return;
    if (drill.loaded) applyChange(change);
    else if (drill.queued.push(change) > 500) drill.queued.shift();
  }

  /** The last JOURNAL_TAIL entries of a sku, newest first. */
  async function journalTail(sku) {
    const result = await api('GET', withQuery('/v1/inventory/journal', { sku, order: 'desc', limit: JOURNAL_TAIL }));
    return { entries: result.entries || [], truncated: false };
  }

  function renderJournal({ entries, truncated }) {
    $('#journal-note').textContent = entries.length
      ? `last ${fmtNum(entries.length)} entries, newest first${truncated ? ' (journal too long to reach the end)' : ''}` : '';
    $('#journal-body').replaceChildren(...(entries.length ? entries.map((e) => h('tr', { 'data-seq': e.seq },
      numTd(e.seq), td(timeEl(e.occurred_at)), td(e.type), td(e.location_id), numTd(e.quantity),
      td(`${e.on_hand_change > 0 ? '+' : ''}${fmtNum(e.on_hand_change)}`, 'num'),
      td(e.source), textTd([e.reference, e.reason].filter(Boolean).join(' · '))))
      : [h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'No journal entries'))]));
  }

  async function openSku(raw) {
    const sku = raw.trim();
    if (!sku) return;
    closeDrill();
    const generation = drill.generation;
    drill.sku = sku;
    $('#drill-content').hidden = false;
    $('#drill-sku').textContent = sku;
    for (const box of ['#positions-error', '#journal-error']) $(box).hidden = true;
    $('#positions-body').replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'Loading…')));
    $('#positions-total').replaceChildren();
    $('#journal-body').replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'Loading…')));
    $('#journal-note').textContent = '';
    $('#live-changes').textContent = '0 live changes received';

    drill.stream = new SseStream(withQuery('/v1/inventory/changes/stream', { sku }), {
      onEvent: onChangeEvent,
      fatal: [400, 403, 404, 422],
      onState: (s, error) => {
        if (generation !== drill.generation) return;
        $('#drill-live').textContent = s === 'open' ? 'live' : s === 'failed' ? `live updates unavailable: ${error.message}` : 'reconnecting…';
        $('#drill-live').className = s === 'open' ? 'live-status on' : 'live-status off';
      },
    }).start();

    const [positions, journal] = await Promise.allSettled([
      api('GET', withQuery('/v1/inventory/positions', { sku })),
      journalTail(sku),
    ]);
    if (generation !== drill.generation) return;
    if (positions.status === 'fulfilled') {
      for (const p of positions.value.positions || []) drill.rows.set(p.location_id, p);
      renderPositions();
      drill.loaded = true;
      // Changes that arrived while loading: keep those newer than the loaded figures.
      for (const change of drill.queued) {
        const p = drill.rows.get(change.location_id);
        if (!p || !(Date.parse(change.changed_at) < Date.parse(p.updated_at))) applyChange(change);
      }
      drill.queued = [];
    } else if (!isAbort(positions.reason)) {
      showSectionError('#positions-error', positions.reason);
      $('#positions-body').replaceChildren();
    }
    if (journal.status === 'fulfilled') renderJournal(journal.value);
    else if (!isAbort(journal.reason)) {
      showSectionError('#journal-error', journal.reason);
      $('#journal-body').replaceChildren();
    }
  }

  function showSectionError(selector, error) {
    const box = $(selector);
    box.textContent = error.message;
    box.hidden = false;
  }

  // ------------------------------------------------------------ session

  function showLogin(message) {
    $('#dashboard').hidden = true;
    $('#login-view').hidden = false;
    $('#login-error').textContent = message || '';
    $('#login-status').textContent = '';
  }

  async function signIn(rawToken, fromStorage) {
    const token = rawToken.trim();
    if (!token) { $('#login-error').textContent = 'Paste a token first.'; return; }
    const button = $('#login');
    button.disabled = true;
    $('#login-error').textContent = '';
    $('#login-status').textContent = fromStorage ? 'Checking the saved token…' : 'Checking…';
    try {
      const health = await api('GET', '/v1/ops/sync-health', { token, signal: null });
      if (!health || typeof health !== 'object' || !health.postings) throw new ApiError(0, 'Unexpected answer from /v1/ops/sync-health');
      sessionStorage.setItem(TOKEN_KEY, token);
      startSession(token, health);
    } catch (e) {
      if (fromStorage && (e.status === 401 || e.status === 403)) sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.message);
    } finally {
      button.disabled = false;
      $('#login-status').textContent = '';
    }
  }

  function startSession(token, health) {
    session.token = token;
    session.abort = new AbortController();
    $('#token').value = '';
    $('#login-view').hidden = true;
    $('#dashboard').hidden = false;
    setLive(false);
    onHealth(health, 'sign-in'); // first report: every list loads

    session.streams.push(new SseStream('/v1/ops/sync-health/stream', {
      idleMs: 15000,
      onState: (s) => setLive(s === 'open'),
      onEvent: (event) => {
        if (event.type === 'health') onHealth(JSON.parse(event.data), 'live');
      },
    }).start());

    session.timers.push(
      setInterval(pollHealth, HEALTH_POLL_MS),
      setInterval(() => { deadPostings.refresh(); webhookDeadLetters.refresh(); }, LIST_REFRESH_MS),
      setInterval(() => { parked.refresh(); exceptions.refresh(); }, SLOW_LIST_REFRESH_MS),
      setInterval(tickClocks, CLOCK_TICK_MS),
    );
  }

  function stopSession() {
    session.token = null;
    if (session.abort) session.abort.abort();
    session.streams.forEach((s) => s.close());
    session.timers.forEach(clearInterval);
    session.streams = [];
    session.timers = [];
    closeDrill();
    state.health = null;
    locationsSignature = '';
    setLive(false);
    // Drop everything shown so the next operator starts clean.
    for (const id of ['#dead-letters-body', '#exceptions-body', '#parked-body', '#webhook-subs', '#locations-body',
      '#impact-flows-body', '#impact-summary', '#cards', '#positions-body', '#positions-total', '#journal-body']) {
      $(id).replaceChildren();
    }
    for (const box of document.querySelectorAll('.section-error')) box.hidden = true;
    for (const count of document.querySelectorAll('.count')) count.textContent = '';
    $('#parked-result').textContent = '';
    $('#drill-content').hidden = true;
    $('#sku-input').value = '';
    $('#banner').hidden = true;
  }

  function endSession(error) {
    if (!session.token) return;
    stopSession();
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(`Signed out: ${error.message}`);
  }

  function signOut() {
    stopSession();
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('');
  }

  // -------------------------------------------------------------- wiring

  function init() {
    $('#login').addEventListener('click', () => signIn($('#token').value, false));
    $('#token').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) signIn($('#token').value, false);
    });
    $('#logout').addEventListener('click', signOut);
    document.addEventListener('keydown', (e) => { if (e.key === 'Escape') $('#banner').hidden = true; });
    $('#location-filter').addEventListener('input', () => renderLocations(true));
    $('#replay-parked').addEventListener('click', replayParked);
    $('#sku-form').addEventListener('submit', (e) => {
      e.preventDefault();
      openSku($('#sku-input').value);
    });
    $('#positions-body').addEventListener('animationend', (e) => {
      const tr = e.target.closest('tr');
      if (tr) tr.classList.remove('flash');
    });

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved, true);
    else showLogin('');
  }

  init();
})();
