// Following a job (training, growing, importing) until it finishes.
import { api, call, errorMessage } from './api/http'
import { isJobActive, type Job } from './models'
import { Poller } from './poll'

export function getJob(jobId: string): Promise<Job> {
  return call(api.GET('/api/v1/jobs/{job_id}', { params: { path: { job_id: jobId } } }))
}

/** Poll a job: quickly while it moves, more slowly while it waits; stops when it is finished. */
export function followJob(
  jobId: string,
  onJob: (job: Job) => void,
  onError: (message: string) => void = () => {},
  options: { minMs?: number; maxMs?: number } = {},
): Poller<Job> {
  const poller = new Poller<Job>({
    fetch: () => getJob(jobId),
    onData: onJob,
    onError: (err) => onError(errorMessage(err)),
    done: (job) => !isJobActive(job),
    // progress and stage changes count as news; the ETA ticking down alone does not
    same: (a, b) => a.status === b.status && a.progress === b.progress && a.stage === b.stage && a.metrics.length === b.metrics.length,
    minMs: options.minMs ?? 1000,
    maxMs: options.maxMs ?? 8000,
  })
  poller.start()
  return poller
}

export function cancelJob(jobId: string): Promise<Job> {
  return call(api.POST('/api/v1/jobs/{job_id}/cancel', { params: { path: { job_id: jobId } } }))
}
