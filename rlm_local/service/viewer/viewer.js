// rlm-local trajectory viewer: a run as a tree, one level at a time, paged (100 children a page), live.
const RLMViewer = (() => {
  const PAGE = 100;
  const key = (() => {
    const m = location.hash.match(/key=([^&]+)/);
    if (m) localStorage.setItem('rlm-key', decodeURIComponent(m[1]));
    return localStorage.getItem('rlm-key');
  })();
  async function api(path) {
    const r = await fetch(path, {headers: key ? {Authorization: 'Bearer ' + key} : {}});
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) {
      throw new Error((key ? 'the key kept in this browser was refused' : 'this server needs an API key') +
        ': open ' + location.pathname + '#key=<your key> (it is kept in this browser)');
    }
    if (!r.ok) throw new Error(body.error ? body.error.message : r.status + ' ' + r.statusText);
    return body;
  }
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; };
  const fmt = (n) => n == null ? '' : Number(n).toLocaleString();

  async function listRuns(tbody) {
    let runs;
    try { runs = (await api('/v1/runs')).data; } catch (e) {
      tbody.textContent = '';
      const tr = el('tr', 'message'), td = el('td', 'error', 'error: ' + e.message);
      td.colSpan = 7; tr.appendChild(td); tbody.appendChild(tr);
      document.getElementById('status').textContent = 'error';
      return;
    }
    tbody.textContent = '';
    for (const r of runs) {
      const tr = el('tr');
      const a = el('a', null, r.id); a.href = '/runs/' + r.id;
      const td = el('td'); td.appendChild(a); tr.appendChild(td);
      for (const v of [r.model, r.status, r.question || '', (r.answer || '').slice(0, 120), r.seconds,
                       r.created ? new Date(r.created * 1000).toLocaleString() : '']) tr.appendChild(el('td', null, v));
      tbody.appendChild(tr);
    }
    if (!runs.length) tbody.appendChild(el('tr', null, 'no runs yet'));
  }

  let runInfo = null;
  function span() {
    const end = runInfo.seconds ? runInfo.start + runInfo.seconds : Date.now() / 1000;
    return Math.max(end - runInfo.start, 1e-3);
  }

  function tokens(n) {
    const parts = [];
    if (n.prompt_tokens != null) parts.push(fmt(n.prompt_tokens) + ' in');
    if (n.completion_tokens != null) parts.push(fmt(n.completion_tokens) + ' out');
    const t = el('span', 'tokens', parts.join(' · '));
    if (n.cached_tokens) { t.appendChild(document.createTextNode(' · ')); t.appendChild(el('span', 'hit', fmt(n.cached_tokens) + ' cached'));}
    if (n.size && (n.kind === 'batch' || n.kind === 'cell' || n.kind === 'child')) t.appendChild(document.createTextNode((parts.length ? ' · ' : '') + n.size + ' inside'));
    return t;
  }

  function bar(n) {
    const b = el('div', 'bar'), s = el('span');
    if (n.start && runInfo.start) {
      const total = span();
      s.style.left = Math.max(0, (n.start - runInfo.start) / total * 100) + '%';
      s.style.width = Math.min(100, (n.seconds || 0) / total * 100) + '%';
    }
    b.title = (n.seconds || 0).toFixed(3) + ' s';
    b.appendChild(s);
    return b;
  }

  function detail(n) {
    const d = el('div', 'detail');
    const add = (label, text, cls) => { if (text) { d.appendChild(el('div', null, label)); d.appendChild(el('pre', cls || null, text)); } };
    add('question', n.question); add('code', n.code); add('prompt', n.prompt);
    add(n.kind === 'cell' ? 'output' : n.kind === 'turn' ? 'reply' : 'answer', n.text);
    add('final', n.final); add('error', n.error, 'error');
    if (n.stopped_reason) add('stopped', n.stopped_reason);
    return d;
  }

  function nodeItem(runId, n, expanded) {
    const li = el('li'); li.dataset.node = n.id; li.dataset.kind = n.kind;
    const row = el('div', 'row');
    const caret = el('span', 'caret' + (n.size ? '' : ' leaf'), '▸');
    const label = el('span', 'label', n.label); label.title = n.label;
    row.append(caret, el('span', 'kind ' + n.kind, n.kind), label, tokens(n), bar(n), el('span', 'secs', (n.seconds || 0).toFixed(2) + ' s'));
    const det = detail(n);
    const kids = el('ul');
    li.append(row, det, kids);
    label.onclick = () => det.classList.toggle('open');
    caret.onclick = async () => {
      if (li.classList.toggle('open')) { caret.textContent = '▾'; expanded.add(n.id); await loadChildren(runId, n.id, kids, 0, expanded); }
      else { caret.textContent = '▸'; expanded.delete(n.id); kids.textContent = ''; }
    };
    return li;
  }

  async function loadChildren(runId, nodeId, ul, offset, expanded) {
    const page = await api(`/v1/runs/${runId}/tree?node=${encodeURIComponent(nodeId)}&offset=${offset}&limit=${PAGE}`);
    runInfo = page.run;
    if (offset === 0) ul.textContent = '';
    for (const c of page.children) {
      const li = nodeItem(runId, c, expanded);
      ul.appendChild(li);
      if (expanded.has(c.id)) li.querySelector('.caret').click();
    }
    const left = page.total - offset - page.children.length;
    if (left > 0) {
      const more = el('button', 'more', `show ${Math.min(PAGE, left)} more (${fmt(left)} left)`);
      more.onclick = async () => { more.remove(); await loadChildren(runId, nodeId, ul, offset + PAGE, expanded); };
      ul.appendChild(more);
    }
    return page;
  }

  function summary(page) {
    const r = page.run, s = document.getElementById('summary');
    document.getElementById('title').textContent = r.label;
    const st = document.getElementById('status'); st.textContent = page.status; st.className = 'status ' + page.status;
    s.textContent = '';
    const dl = el('dl');
    const u = r.usage && r.usage.total;
    const rows = [['answer', r.answer], ['stopped', r.stopped_reason], ['seconds', r.seconds],
                  ['tokens', u ? `${fmt(u.prompt_tokens)} in · ${fmt(u.completion_tokens)} out · ${fmt(u.cached_tokens)} cached · ${fmt(u.calls)} model calls` : null]];
    for (const [k, v] of rows) if (v != null && v !== '') { dl.appendChild(el('dt', null, k)); dl.appendChild(el('dd', null, v)); }
    s.appendChild(dl);
  }

  async function showRun(runId, ul) {
    const expanded = new Set();
    const refresh = async () => {
      const page = await loadChildren(runId, 'run', ul, 0, expanded);
      summary(page);
      document.body.dataset.loaded = 'yes';
      if (page.status === 'running') setTimeout(refresh, 1000);  // live while the run goes on
    };
    try { await refresh(); } catch (e) { ul.textContent = 'error: ' + e.message; }
  }
  return {listRuns, showRun};
})();
