/** `caat report`: an HTML report with plots and a markdown summary of sweep or run folders (src/experiments/report.ts). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadReportData, writeReport } from '../experiments/report.js';
import { UserError } from './run.js';

export interface ReportFlags {
  out?: string;
  bench?: string;
  title?: string;
}

export async function reportCommand(dirs: string[], f: ReportFlags): Promise<void> {
  if (dirs.length === 0) throw new UserError('give at least one sweep folder or run folder');
  for (const d of dirs) if (!fs.existsSync(d)) throw new UserError(`${d}: no such folder`);
  const data = loadReportData(dirs, f.bench ? { bench: f.bench } : {});
  const html = f.out ?? path.join(dirs[0]!, 'report.html');
  const { md } = writeReport(data, html, f.title ? { title: f.title } : {});
  process.stdout.write(md);
  process.stderr.write(`report: ${html} and ${html.replace(/\.html?$/, '')}.md\n`);
}
