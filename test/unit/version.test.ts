import t from 'tap';
import { version } from '../../lib/version.ts';
t.match(version, /^\d+\.\d+\.\d+/);
