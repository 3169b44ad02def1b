#!/usr/bin/env node
// Checks a Grafana dashboard JSON (default: the chart's agentguard.json) against Grafana's own
// published TypeScript schema, @grafana/schema, with tsc --strict.
//
//   node tests/dashboard/check-schema.mjs [path/to/dashboard.json]
//
// The JSON is pasted as an object literal into a generated .ts file and checked with
// `satisfies`: a wrong type, a missing required field or an unknown field (an excess property)
// anywhere in the dashboard fails, and tsc's messages are printed with lines of the JSON file.
// The dashboard type is @grafana/schema's Dashboard, narrowed where the schema is loose:
//   - each panel is one of the panel types the dashboard may use, with that plugin's Options and
//     custom FieldConfig types (the schema's Panel has `options: Record<string, unknown>`);
//   - each target is a Prometheus query (Grafana's PrometheusDataQuery kind, which
//     @grafana/schema does not export, so it is written out below);
//   - fieldConfig.defaults.custom is the plugin's type without the catch-all index signature.
// JSON has no TypeScript enums, so Json<T> maps every enum to its values (string enums to
// their string literals, numeric enums to their numbers) and leaves everything else as strict
// as the schema is.
//
// Dependencies (exact versions in package-lock.json) are installed with `npm ci` into
// ${XDG_CACHE_HOME:-$HOME/.cache}/agentguard/dashboard-check/, never into the repository,
// and again whenever package.json or package-lock.json change. Exit status: 0 when the
// dashboard satisfies the schema, 1 when it does not, 2 when the check could not run.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const dashboardPath = resolve(
  process.argv[2] ?? join(repo, 'charts', 'agentguard', 'dashboards', 'agentguard.json'),
);
const cache = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'agentguard', 'dashboard-check');

function fail(status, message) {
  process.stderr.write(`check-schema: ${message}\n`);
  process.exit(status);
}

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

// One installer at a time across processes (cargo runs tests in parallel): a lock directory
// holding the owner's pid; a lock whose owner died is taken over.
function withLock(fn) {
  const lock = `${cache}.lock`;
  mkdirSync(dirname(lock), { recursive: true });
  const deadline = Date.now() + 10 * 60 * 1000;
  for (;;) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      let owner = NaN;
      try {
        owner = Number(readFileSync(join(lock, 'pid'), 'utf8'));
      } catch {
        // Being created right now, or its owner died before writing the pid: look again.
      }
      if (Number.isInteger(owner) && owner > 0 && !alive(owner)) {
        rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) fail(2, `timed out waiting for the lock ${lock}`);
      sleep(200);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

function install() {
  const manifest = readFileSync(join(here, 'package.json'));
  const lockfile = readFileSync(join(here, 'package-lock.json'));
  const want = createHash('sha256').update(manifest).update('\0').update(lockfile).digest('hex');
  const marker = join(cache, '.installed');
  const tsc = join(cache, 'node_modules', 'typescript', 'bin', 'tsc');
  const current = () => existsSync(marker) && readFileSync(marker, 'utf8') === want && existsSync(tsc);
  if (current()) return tsc;
  withLock(() => {
    if (current()) return;
    mkdirSync(cache, { recursive: true });
    rmSync(marker, { force: true });
    copyFileSync(join(here, 'package.json'), join(cache, 'package.json'));
    copyFileSync(join(here, 'package-lock.json'), join(cache, 'package-lock.json'));
    process.stderr.write(`check-schema: npm ci in ${cache}\n`);
    const npm = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts'], {
      cwd: cache,
      stdio: ['ignore', 2, 2],
    });
    if (npm.error) fail(2, `cannot run npm (${npm.error.message}); install Node.js 18+ and npm`);
    if (npm.status !== 0) fail(2, `npm ci failed in ${cache} (exit ${npm.status})`);
    writeFileSync(marker, want);
  });
  if (!current()) fail(2, `dependencies in ${cache} are not complete after npm ci`);
  return tsc;
}

const PANEL_CFG = '@grafana/schema/dist/esm/raw/composable';

// Everything before the dashboard literal. Keep the line count in mind: tsc's line numbers are
// mapped back to the JSON file by subtracting the lines before it.
const HEADER = `\
import type * as G from '@grafana/schema';
import type * as BarGauge from '${PANEL_CFG}/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as PieChart from '${PANEL_CFG}/piechart/panelcfg/x/PieChartPanelCfg_types.gen';
import type * as Stat from '${PANEL_CFG}/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as Table from '${PANEL_CFG}/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as TimeSeries from '${PANEL_CFG}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

// A JSON document holds an enum's values, not its members: string enums become their string
// literals, numeric enums their numbers. Everything else keeps the schema's type.
type IsAny<T> = 0 extends 1 & T ? true : false;
type Json<T> = IsAny<T> extends true
  ? T
  : T extends string
    ? \`\${T}\`
    : T extends number
      ? \`\${T}\` extends \`\${infer N extends number}\`
        ? N
        : never
      : T extends boolean | null | undefined
        ? T
        : T extends ReadonlyArray<infer U>
          ? Array<Json<U>>
          : T extends object
            ? { [K in keyof T]: Json<T[K]> }
            : T;

// Grafana's PrometheusDataQuery kind (public/app/plugins/datasource/prometheus); not exported by
// @grafana/schema.
interface PrometheusQuery extends G.DataQuery {
  editorMode?: 'code' | 'builder';
  exemplar?: boolean;
  expr: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  interval?: string;
  intervalFactor?: number;
  legendFormat?: string;
  range?: boolean;
}

// fieldConfig.defaults.custom of one panel plugin, without the schema's Record<string, unknown>.
type FieldConfigSourceOf<Custom> = Omit<G.FieldConfigSource, 'defaults'> & {
  defaults: Omit<G.FieldConfig, 'custom'> & { custom?: Custom };
};
// For plugins with no custom field config: \`custom\` may only be empty.
type NoCustom = Record<string, never>;

type PanelOf<Type extends string, Options, Custom> = Omit<
  G.Panel,
  'type' | 'options' | 'fieldConfig' | 'targets'
> & {
  type: Type;
  options: Options;
  fieldConfig: FieldConfigSourceOf<Custom>;
  targets: PrometheusQuery[];
};

type AgentguardPanel =
  | PanelOf<'timeseries', TimeSeries.Options, TimeSeries.FieldConfig>
  | PanelOf<'stat', Stat.Options, NoCustom>
  | PanelOf<'table', Table.Options, Table.FieldConfig>
  | PanelOf<'bargauge', BarGauge.Options, NoCustom>
  | PanelOf<'piechart', PieChart.Options, PieChart.FieldConfig>;

type AgentguardRow = Omit<G.RowPanel, 'panels'> & { panels: AgentguardPanel[] };

type AgentguardDashboard = Omit<G.Dashboard, 'panels'> & {
  panels: Array<AgentguardPanel | AgentguardRow>;
};

export const dashboard = (
`;
const FOOTER = `
) satisfies Json<AgentguardDashboard>;
`;

function main() {
  let text;
  try {
    text = readFileSync(dashboardPath, 'utf8');
  } catch (e) {
    fail(2, `cannot read ${dashboardPath}: ${e.message}`);
  }
  try {
    const parsed = JSON.parse(text);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      fail(1, `${dashboardPath}: the dashboard is not a JSON object`);
    }
  } catch (e) {
    fail(1, `${dashboardPath}: not valid JSON: ${e.message}`);
  }
  // JSON is a TypeScript expression, except that U+2028/U+2029 were not always allowed in
  // strings and `__proto__` keys mean something else in an object literal.
  if (/"__proto__"\s*:/.test(text)) fail(1, `${dashboardPath}: a "__proto__" key cannot be checked`);

  const tsc = install();
  const offset = HEADER.split('\n').length - 1;
  const run = mkdtempSync(join(cache, 'run-'));
  let result;
  try {
    const source = join(run, 'dashboard.ts');
    writeFileSync(source, HEADER + text.replace(/\s+$/, '') + FOOTER);
    result = spawnSync(
      process.execPath,
      [
        tsc,
        '--noEmit',
        '--strict',
        '--exactOptionalPropertyTypes',
        '--noErrorTruncation',
        '--pretty',
        'false',
        '--target',
        'es2022',
        '--module',
        'esnext',
        '--moduleResolution',
        'bundler',
        source,
      ],
      { cwd: run, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
    );
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
  // After the clean-up: process.exit() would skip the finally block.
  if (result.error) fail(2, `cannot run tsc: ${result.error.message}`);
  if (result.status !== 0) {
    const output = `${result.stdout}${result.stderr}`.replaceAll(
      /^(.*?dashboard\.ts)\((\d+),(\d+)\)/gm,
      (_, file, line, col) => {
        const l = Number(line) - offset;
        return l >= 1 ? `${dashboardPath}:${l}:${col}` : `${file}(${line},${col}) [check header]`;
      },
    );
    process.stderr.write(output);
    fail(1, `${dashboardPath} does not satisfy @grafana/schema's Dashboard (tsc exit ${result.status})`);
  }
  process.stdout.write(`check-schema: ${dashboardPath} satisfies @grafana/schema's Dashboard\n`);
}

main();
