// What the label review and labelling pages both start from: the dataset, its models that serve a version, and
// the one to use (the page's ?model= if it is one of them, else the first).
import { api, call, type Schemas } from './api/http'

export interface DatasetModels {
  detail: Schemas['DatasetDetail']
  models: Schemas['ModelPublic'][]
  modelId: string | null
}

export async function loadDatasetModels(datasetId: string, search: string): Promise<DatasetModels> {
  const detail = await call(api.GET('/api/v1/datasets/{dataset_id}', { params: { path: { dataset_id: datasetId } } }))
  const all = await call(api.GET('/api/v1/models', { params: { query: { limit: 100 } } }))
  const models = all.items.filter((m) => m.dataset_id === datasetId && m.active_version !== null)
  const wanted = new URLSearchParams(search).get('model')
  return { detail, models, modelId: models.find((m) => m.id === wanted)?.id ?? models[0]?.id ?? null }
}
